"""Shared by every tier: labels, model spec, preprocessing, data sources, wire codecs, plots, client.

Nothing in this package imports TensorFlow at import time: the client and the edge run without it.
"""
