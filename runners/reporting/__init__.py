"""Reporting: what reads the results store and never writes a run.

``report`` (tables, plots and report.md; ``python -m runners.reporting.report``), ``tables``,
``plots`` and ``plot_style``, ``compare`` (against published numbers), ``leaderboard``,
``aggregate`` (seeds and paired differences), ``labels`` and ``formatting`` (how rows and
numbers are written), ``report_text``.
"""
