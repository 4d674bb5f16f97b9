"""The in-process classifier interface every tier implements, and loading by model kind.

A classifier has a `spec` (ModelSpec) and `predict(x)`: float32 [N, H, W, 3] in the spec's pixel range ->
float32 probabilities [N, C]. The TF SavedModel classifier lives in `cassava.cloud.model`, the TFLite one in
`cassava.edge.interpreter`; this module picks one without importing TensorFlow unless it is needed.
"""
from __future__ import annotations

from pathlib import Path
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


def is_tflite(model: str) -> bool:
    path = Path(model)
    return path.suffix == ".tflite" or (path.is_dir() and (path / "model.tflite").is_file())


def load_classifier(model: str, input_scale: Optional[float] = None, classes=None, **kwargs) -> Classifier:
    """MODEL (TF Hub handle, SavedModel dir, `standin`, or a .tflite / converted dir) -> classifier."""
    if is_tflite(model):
        from cassava.edge.interpreter import load_tflite_classifier

        return load_tflite_classifier(model, input_scale=input_scale, classes=classes, **kwargs)
    from cassava.cloud.model import load_tf_classifier

    return load_tf_classifier(model, input_scale=input_scale, classes=classes)
