"""Reports: everything here is regenerated from ``results/`` (our measurements) and ``reports/published/``
(the papers' numbers, stored as CSV data with their source and confidence, never as Python constants).

``python -m reports.build --results results --out reports/out`` writes the plots and ``report.md`` (the headline
NFT-vs-FlowGRPO runs of ``results/headline`` first); :mod:`reports.groups` decides which runs are seeds of one curve
and which training clock a comparison uses; :mod:`reports.speedup` turns curves into "time to reach a score" and
speedup ratios with censoring and bootstrap intervals over seeds (``python -m reports.speedup`` prints the tables);
:mod:`reports.tuning` tabulates single runs against the training clock.
"""
