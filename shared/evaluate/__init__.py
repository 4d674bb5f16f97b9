"""Cloud vs edge on the same labelled images: `cassava compare`.

  compare.py     the command: a pipeline of named steps (images, models, pixels, predictions and timing, scores)
  entries.py     the models compared: the cloud model, its TFLite copies, or running V2 servers
  conversion.py  converting the cloud model through the edge's `convert` when no --edge-model is given (cached)
  measure.py     batched prediction and time per image (also used by `cassava convert` and the benchmarks)
  latency.py     p50/p95 at 1 and at all threads (TF's 1-thread run in a fresh process)
  metrics.py     accuracy with Wilson intervals, per-class scores, agreement, |Δp|, latency percentiles
  report.py      report.md / report.json and the figures
"""
