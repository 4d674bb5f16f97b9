"""The client side: `cassava predict` / `python -m cassava.client`.

  predict.py   the command: data -> preprocess -> a backend -> records, plot, JSON/CSV
  backends.py  where images are classified: in this process, or a V2 server (ServerBackend, also used by compare)
  routing.py   which server answers: one tier, or --auto (the edge, failing over to the cloud)
  plotting.py  predictions against labels, as a grid of images
"""
