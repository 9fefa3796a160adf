"""The benchmark harness: run one method on one reward in one world, and record what happened.

:mod:`bench.records` is the results store every run writes to (``<results_root>/<run_id>/meta.json`` plus
append-only Parquet parts in one fixed long schema), so that ``reports`` can rebuild every plot and table from
``results/`` alone. ``bench.run`` (the entry point) drives a training run and logs into a
:class:`bench.records.RunRecorder`.
"""
