"""The TFLite model as a Classifier, without TensorFlow: a pool of LiteRT interpreters, one per concurrent call.

A TFLite interpreter is not thread-safe, so each one is used by one thread at a time: `predict` takes an
interpreter from the pool (waiting when all are busy) and gives it back afterwards. Quantized (uint8/int8) input
and output are converted with the tensors' own scale and zero point, so callers always pass floats in the model's
pixel range and get float probabilities back, whatever the conversion.

Batches run one image at a time on a batch-1 interpreter. Measured on 2 cores (benchmarks/bench_edge.py prints it
again): with 1 thread per interpreter, the per-image loop and an interpreter resized to N cost the same per image
(int8 stand-in 0.38 ms, int8 256-px real model 3.6 ms; the loop was 5% faster at N=16), because XNNPACK's int8
kernels gain nothing from a batch dimension on a small CPU. Resizing would also re-allocate on most calls (the
micro-batcher sends a different N each time) and make every pooled interpreter hold activations for the largest
batch seen. Parallelism comes from the pool instead: `pool_size` interpreters serve that many batches at once.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import queue
from pathlib import Path
from typing import Optional

import numpy as np

from cassava.shared.classifier import softmax
from cassava.shared.errors import CassavaError
from cassava.shared.native import debugging, native_stderr_silenced
from cassava.shared.spec import TFLITE_FILE, ModelSpec, apply_overrides, base_spec, check_interface, read_spec_file

log = logging.getLogger(__name__)

# (name, module with `Interpreter`), in order of preference; TensorFlow last because it weighs ~1 GB.
BACKENDS = (
    ("ai-edge-litert", "ai_edge_litert.interpreter"),
    ("tflite-runtime", "tflite_runtime.interpreter"),
    ("tensorflow", "tensorflow.lite.python.interpreter"),  # `tensorflow.lite` itself is a lazy API module
)


def _find_backend() -> Optional[str]:
    """The first installed interpreter package, without importing TensorFlow just to look."""
    for name, module in BACKENDS:
        try:
            if name == "tensorflow":
                return name if importlib.util.find_spec("tensorflow") else None
            importlib.import_module(module)
            return name
        except ImportError:
            continue
    return None


BACKEND = _find_backend()  # which package runs the TFLite models in this process


def interpreter_class(backend: Optional[str] = None):
    name = backend or BACKEND
    if name is None:
        raise CassavaError("no TFLite interpreter installed: pip install ai-edge-litert "
                           "(32-bit Raspberry Pi OS: pip install tflite-runtime 'numpy<2')")
    module = dict(BACKENDS).get(name)
    if module is None:
        raise CassavaError(f"unknown TFLite backend {name!r} (choose from {', '.join(n for n, _ in BACKENDS)})")
    if name == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return importlib.import_module(module).Interpreter
    except ImportError as exc:
        raise CassavaError(f"TFLite backend {name} cannot be imported ({exc})") from None


def model_file(model) -> Path:
    """A .tflite file, or a folder holding model.tflite (as written by `cassava convert`)."""
    path = Path(model)
    if path.is_dir():
        path = path / TFLITE_FILE
    if not path.is_file():
        raise CassavaError(f"model {model}: no such TFLite file (expected a .tflite file or a folder with "
                           f"{TFLITE_FILE}; make one with `cassava convert`)")
    return path


class Port:
    """One input or output tensor: its index and how to move between floats and its stored dtype."""

    def __init__(self, detail: dict):
        self.name = detail["name"]
        self.index = detail["index"]
        self.dtype = np.dtype(detail["dtype"])
        self.shape = [int(d) for d in detail.get("shape_signature", detail["shape"])]
        scale, zero_point = detail.get("quantization", (0.0, 0))
        self.scale, self.zero_point = float(scale), int(zero_point)
        self.quantized = self.dtype in (np.uint8, np.int8) and self.scale > 0

    def to_tensor(self, x: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return x.astype(self.dtype, copy=False)
        info = np.iinfo(self.dtype)
        q = np.divide(x, np.float32(self.scale))  # TFLite's own rule: q = round(x / scale) + zero_point
        np.rint(q, out=q)
        if self.zero_point:
            q += self.zero_point
        np.clip(q, info.min, info.max, out=q)
        return q.astype(self.dtype)

    def from_tensor(self, q: np.ndarray) -> np.ndarray:
        if not self.quantized:
            return q.astype(np.float32, copy=False)
        return (q.astype(np.float32) - np.float32(self.zero_point)) * np.float32(self.scale)

    def describe(self) -> dict:
        return {"name": self.name, "dtype": self.dtype.name, "shape": self.shape,
                "scale": self.scale, "zero_point": self.zero_point}


def _pick(details, name: Optional[str], what: str, path: Path) -> dict:
    if name is None:
        if len(details) != 1:
            names = ", ".join(d["name"] for d in details)
            raise CassavaError(f"model {path}: {len(details)} {what} tensors ({names}); name one with {what}_tensor")
        return details[0]
    for detail in details:
        if detail["name"] == name:
            return detail
    names = ", ".join(d["name"] for d in details)
    raise CassavaError(f"model {path}: no {what} tensor named {name!r} (has {names})")


class TFLiteClassifier:
    """Thread-safe: `pool_size` interpreters, each used by one thread at a time."""

    def __init__(self, path: Path, spec: ModelSpec, num_threads: int = 1, pool_size: int = 1,
                 input_tensor: Optional[str] = None, output_tensor: Optional[str] = None,
                 backend: Optional[str] = None):
        self.path = path
        self.backend = backend or BACKEND
        self.num_threads = max(1, int(num_threads))
        self.pool_size = max(1, int(pool_size))
        self._make = interpreter_class(self.backend)
        self._pool: "queue.Queue" = queue.Queue()
        first = self._new_interpreter()
        self.input = Port(_pick(first.get_input_details(), input_tensor, "input", path))
        self.output = Port(_pick(first.get_output_details(), output_tensor, "output", path))
        check_interface(spec, self.input.shape, self.output.shape[-1], f"model {path}")
        self.spec = spec
        self._pool.put(first)
        for _ in range(self.pool_size - 1):
            self._pool.put(self._new_interpreter())
        log.info("TFLite model %s on %s: %d interpreter(s) x %d thread(s), input %s %s, output %s %s", path,
                 self.backend, self.pool_size, self.num_threads, self.input.name, self.input.dtype.name,
                 self.output.name, self.output.dtype.name)

    def _new_interpreter(self):
        try:
            with native_stderr_silenced(not debugging()):  # LiteRT's "Created ... XNNPACK delegate" line, from C++
                interpreter = self._make(model_path=str(self.path), num_threads=self.num_threads)
                interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            text = str(exc)
            if "Flex delegate" in text or "Select TensorFlow op" in text:
                raise CassavaError(f"model {self.path}: uses TensorFlow ops (converted with --select-tf-ops) and "
                                   f"{self.backend} has no Flex delegate") from None
            first = text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
            raise CassavaError(f"model {self.path}: not a valid TFLite model ({first})") from None
        return interpreter

    def _invoke(self, interpreter, image: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(self.input.index, self.input.to_tensor(image[None]))
        interpreter.invoke()
        return self.output.from_tensor(interpreter.get_tensor(self.output.index)[0])

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        interpreter = self._pool.get()
        try:
            scores = np.stack([self._invoke(interpreter, image) for image in x]) if len(x) else \
                np.zeros((0, self.spec.num_classes), np.float32)
        finally:
            self._pool.put(interpreter)
        return softmax(scores) if self.spec.outputs == "logits" else scores


def load_tflite_classifier(model, input_scale=None, classes=None, num_threads: Optional[int] = None,
                           pool_size: Optional[int] = None, input_tensor: Optional[str] = None,
                           output_tensor: Optional[str] = None, backend: Optional[str] = None) -> TFLiteClassifier:
    """MODEL (.tflite, or a folder with model.tflite + cassava-model.json) -> a thread-safe Classifier.

    Tensor names come from cassava-model.json's `tflite` dict unless given here; `num_threads` is per interpreter
    (default 1) and `pool_size` the number of interpreters, i.e. of calls that can run at once (default 1).
    """
    path = model_file(model)
    spec = read_spec_file(path)
    if spec is None:  # a bare .tflite: the input size from the model itself, the rest from flags or defaults
        spec = base_spec(str(path)).replace(input_size=_input_size(path, backend))
    info = spec.tflite or {}
    input_tensor = input_tensor or (info.get("input") or {}).get("name")
    output_tensor = output_tensor or (info.get("output") or {}).get("name")
    spec = apply_overrides(spec, input_scale=input_scale, classes=classes)
    return TFLiteClassifier(path, spec, num_threads=num_threads or 1, pool_size=pool_size or 1,
                            input_tensor=input_tensor, output_tensor=output_tensor, backend=backend)


def _input_size(path: Path, backend: Optional[str]) -> int:
    """A bare .tflite without cassava-model.json: read H from its (first) input tensor."""
    try:
        with native_stderr_silenced(not debugging()):
            interpreter = interpreter_class(backend)(model_path=str(path))
        shape = interpreter.get_input_details()[0]["shape"]
    except (ValueError, RuntimeError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CassavaError(f"model {path}: not a valid TFLite model ({first})") from None
    return int(shape[1]) if len(shape) == 4 and shape[1] > 0 else ModelSpec.input_size
