"""The benchmark harness: run one method on one reward in one world, and record what happened.

:mod:`bench.records` is the results store every run writes to (``<results_root>/<run_id>/meta.json`` plus
Parquet parts in one fixed long schema, compacted into one file when a run finishes), so that ``reports`` can
rebuild every plot and table from ``results/`` alone. ``bench.run`` (the entry point) drives a training run and
logs into a :class:`bench.records.RunRecorder`.
"""

import bench.quiet  # noqa: E402,F401  (silences third-party notices for every entry point; see bench/quiet.py)
