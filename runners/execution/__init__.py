"""Execution: what turns one resolved config into one stored run.

``job`` (one run end to end), ``engine`` (block-by-block pruning), ``models`` and ``adapters``
(loading a model and finding its blocks), ``identity`` (the run id from everything that changes
the numbers), ``store`` and ``claims`` (the results store, written atomically, one claim per
run), ``save`` (pruned checkpoints), ``provenance`` and ``progress``, ``plugins`` (pruners from
installed packages).
"""
