"""Running sweeps and reporting on them.

* ``runners/execution/``: one run from config to stored numbers (job, engine, models, adapters,
  identity, store, claims, save).
* ``runners/reporting/``: reads the store, writes tables, plots, report.md (report, tables, plots,
  compare, leaderboard).
* here: the command-line front shared by both (``cli``: config folder and overrides; ``validate``:
  every run of a sweep checked before anything loads; ``callbacks``: the sweep's progress lines,
  final table and exit code; ``tool_config``: the tools' settings read through Hydra) and the
  benchmarks (``bench``, ``bench_scale``).
"""
