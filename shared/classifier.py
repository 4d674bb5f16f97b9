"""The in-process classifier interface every tier implements, and loading by model kind.

A classifier has a `spec` (ModelSpec) and `predict(x)`: float32 [N, H, W, 3] in the spec's pixel range ->
float32 probabilities [N, C]. The TF SavedModel classifier lives in `cassava.cloud.model`, the TFLite one in
`cassava.edge.interpreter`; the tier registry (`tiers.py`) picks one without importing TensorFlow unless needed.
"""
from __future__ import annotations

from typing import Optional, Protocol

import numpy as np

from .preprocess import to_model_input
from .spec import ModelSpec


class Classifier(Protocol):
    spec: ModelSpec

    def predict(self, x: np.ndarray) -> np.ndarray: ...


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def predict_pixels(classifier: Classifier, pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels [N, H, W, 3] -> probabilities, via the spec's pixel range."""
    return classifier.predict(to_model_input(pixels, classifier.spec.input_scale))


def load_classifier(model: str, input_scale: Optional[float] = None, classes=None, **options) -> Classifier:
    """MODEL (TF Hub handle, SavedModel dir, `standin`, or a .tflite / converted dir) -> classifier.
    `options` (num_threads, pool_size, tensor names) are for the TFLite interpreter."""
    from .tiers import tier_for_model

    tier = tier_for_model(model)
    return tier.load_classifier(model, input_scale=input_scale, classes=classes,
                                **(options if tier.name == "edge" else {}))
