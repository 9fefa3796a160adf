"""Reports: everything here is regenerated from ``results/`` (our measurements) and ``reports/published/``
(the papers' numbers, stored as CSV data with their source and confidence, never as Python constants).

``python -m reports.build --results results --out reports/out`` writes the plots and ``report.md``;
:mod:`reports.speedup` turns reward curves into "time to reach a score" and speedup ratios with bootstrap
intervals over seeds.
"""
