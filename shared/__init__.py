"""Shared by every tier. The dependency-light core here (preprocess, spec, labels, data, tiers, classifier, errors,
cache, synthetic) is imported by everything; the sub-packages hold one side of the wire each:
  protocol/  the V2 codecs and transports     server/    the MLServer runtime base and `cassava serve`
  client/    `cassava predict` and routing    evaluate/  `cassava compare`: cloud vs edge accuracy

Nothing in this package imports TensorFlow at import time: the client and the edge run without it.
"""
