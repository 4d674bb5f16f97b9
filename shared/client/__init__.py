"""The client side: `cassava predict` / `python -m cassava.client`.

  predict.py   the command: the flags, then connect -> classify -> output
  connect.py   the mode flags reconciled once, and the backend they ask for (Seldon's routing headers included)
  classify.py  data -> preprocess -> a backend -> records, `--concurrency` requests at a time
  output.py    the summary line, top-3 text, plot and JSON/CSV
  backends.py  where images are classified: in this process, or a V2 server (ServerBackend, also used by compare)
  routing.py   which server answers: one tier, or --auto (the edge, failing over to the cloud)
  plotting.py  predictions against labels, as a grid of images
"""
