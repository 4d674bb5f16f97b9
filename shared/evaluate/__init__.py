"""Cloud vs edge on the same labelled images: `cassava compare`.

  compare.py  the command: load/convert the models, run them on the same pixels, time them
  metrics.py  accuracy with Wilson intervals, per-class scores, agreement, |Δp|, latency percentiles
  report.py   report.md / report.json and the figures
"""
