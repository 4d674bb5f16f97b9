"""Load the full TensorFlow model: a TF Hub handle (cached), a local SavedModel dir, or the offline stand-in."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from cassava.shared.cache import cache_dir
from cassava.shared.classifier import softmax
from cassava.shared.errors import CassavaError
from cassava.shared.native import import_tensorflow
from cassava.shared.spec import (
    SPEC_FILE,
    ModelSpec,
    apply_overrides,
    base_spec,
    check_hub_handle,
    check_interface,
    is_hub_handle,
)

log = logging.getLogger(__name__)


class TFClassifier:
    """A SavedModel signature (or a plain callable SavedModel) wrapped as a Classifier. TF calls are thread-safe."""

    def __init__(self, fn, spec: ModelSpec, input_key: Optional[str], output_key: Optional[str], saved_model=None):
        self.spec = spec
        self.saved_model = saved_model  # the loaded SavedModel: `cassava convert` builds its converters from it
        self._fn = fn
        self._input_key = input_key
        self._output_key = output_key

    def predict(self, x: np.ndarray) -> np.ndarray:
        tf = import_tensorflow()
        tensor = tf.constant(np.asarray(x, dtype=np.float32))
        result = self._fn(**{self._input_key: tensor}) if self._input_key else self._fn(tensor)
        if isinstance(result, dict):
            result = result[self._output_key] if self._output_key else next(iter(result.values()))
        scores = np.asarray(result, dtype=np.float32)
        return softmax(scores) if self.spec.outputs == "logits" else scores


def resolve_model_path(model: str) -> Path:
    """MODEL -> a local SavedModel directory (downloading a TF Hub handle into the cache, building the stand-in)."""
    if model == "standin":
        from cassava.cloud.standin import ensure_standin

        return ensure_standin()
    if is_hub_handle(model):
        check_hub_handle(model)
        os.environ.setdefault("TFHUB_CACHE_DIR", str(cache_dir() / "tfhub"))
        try:
            import_tensorflow()  # before tensorflow_hub imports it loudly
            import tensorflow_hub as hub
        except ImportError:
            raise CassavaError("TF Hub handles need tensorflow-hub (pip install 'cassava-cloud-edge[cloud]')") from None
        try:
            return Path(hub.resolve(model))
        except Exception as exc:
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise CassavaError(
                f"cannot download {model} ({reason}); offline? use --model standin or a local SavedModel dir"
            ) from None
    path = Path(model)
    if not path.exists():
        raise CassavaError(f"model {model}: no such file or directory (expected a SavedModel dir, a .tflite, "
                           "a TF Hub https handle, or 'standin')")
    if not (path.is_dir() and (path / "saved_model.pb").is_file()):
        raise CassavaError(f"model {model}: not a TensorFlow SavedModel (no saved_model.pb inside)")
    return path


def load_tf_classifier(model: str, input_scale=None, classes=None) -> TFClassifier:
    path = resolve_model_path(model)
    spec = base_spec(str(path)) if not is_hub_handle(model) else base_spec(model)
    tf = import_tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        first = str(exc).splitlines()[0][:160]
        raise CassavaError(f"model {model}: cannot load SavedModel ({type(exc).__name__}: {first})") from None

    signatures = getattr(loaded, "signatures", {}) or {}
    input_key = output_key = None
    input_shape = None
    if spec.signature in signatures:
        fn = signatures[spec.signature]
        inputs = fn.structured_input_signature[1]
        input_key = spec.input_key or _only(inputs, "input", model)
        if input_key not in inputs:
            raise CassavaError(f"model {model}: no input named {input_key!r} (has {', '.join(inputs)})")
        input_shape = inputs[input_key].shape
        outputs = fn.structured_outputs
        output_key = spec.output_key or _only(outputs, "output", model)
        if output_key not in outputs:
            raise CassavaError(f"model {model}: no output named {output_key!r} (has {', '.join(outputs)})")
        num_outputs = outputs[output_key].shape[-1]
    elif callable(loaded):  # TF Hub TF2 modules without a serving signature: call the module itself
        fn, num_outputs = loaded, None
    else:
        raise CassavaError(f"model {model}: no {spec.signature!r} signature and not callable")

    # The input size comes from the model itself when it declares one; flags and the spec file win otherwise.
    sized = input_shape is not None and input_shape.rank == 4 and input_shape[1] is not None
    if sized and "input_size" not in _explicit(path):
        spec = spec.replace(input_size=int(input_shape[1]))
    spec = apply_overrides(spec, input_scale=input_scale, classes=classes)
    spec = spec.replace(input_key=input_key, output_key=output_key)
    classifier = TFClassifier(fn, spec, input_key, output_key, loaded)
    if num_outputs is None:  # learn the output width with one blank image
        num_outputs = classifier.predict(np.zeros((1, spec.input_size, spec.input_size, 3), np.float32)).shape[-1]
    check_interface(spec, input_shape, int(num_outputs), f"model {model}")
    return classifier


def _only(tensors: dict, what: str, model: str) -> str:
    if len(tensors) != 1:
        raise CassavaError(f"model {model}: {len(tensors)} {what}s ({', '.join(tensors)}); "
                           f"name one with {what}_key in cassava-model.json")
    return next(iter(tensors))


def _explicit(path: Path) -> set:
    """Fields set in a cassava-model.json beside the model (those win over detection)."""
    import json

    spec_file = path / SPEC_FILE
    return set(json.loads(spec_file.read_text())) if spec_file.is_file() else set()
