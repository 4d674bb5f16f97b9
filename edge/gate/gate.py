"""The leaf gate at serve time, on both tiers: the backbone's .tflite, the reference embeddings and the threshold.

`LeafGate.distances(x)` takes the batch the cassava model gets (float, the model's input size and pixel range) and
returns each photo's mean cosine distance to its k nearest cassava reference photos; the policy (shared/policy.py)
says `unknown` above the threshold. Both tiers run this same .tflite on the same pixels, so they agree.
"""
from __future__ import annotations

import json
import queue
from pathlib import Path
from typing import Optional

import numpy as np

from cassava.shared.errors import CassavaError
from cassava.shared.native import debugging, native_stderr_silenced
from cassava.shared.preprocess import resize_bilinear

GATE_TFLITE, GATE_REFERENCES, GATE_FILE = "leaf-gate.tflite", "leaf-gate-references.npy", "leaf-gate.json"


def gate_pixels(x: np.ndarray, input_scale: float, size: int) -> np.ndarray:
    """The cassava model's input [N, H, W, 3] -> float32 0-255 pixels [N, size, size, 3] for the backbone (resized
    from what the model got, so a `pixels` or `payload` request is gated exactly like a photo)."""
    pixels = np.asarray(x, dtype=np.float32) * np.float32(255.0 / input_scale)
    if pixels.shape[1] == size and pixels.shape[2] == size:
        return pixels
    return np.stack([resize_bilinear(image, size) for image in pixels])


def knn_distances(embeddings: np.ndarray, references: np.ndarray, k: int) -> np.ndarray:
    """Mean cosine distance of each embedding to its k nearest references (both L2-normalised)."""
    similarity = np.asarray(embeddings, np.float32) @ np.asarray(references, np.float32).T
    k = min(k, similarity.shape[1])
    nearest = -np.partition(-similarity, k - 1, axis=1)[:, :k]
    return 1.0 - nearest.mean(axis=1)


def normalise(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


class Embedder:
    """The backbone's .tflite: a pool of interpreters (one per concurrent call: an interpreter is not thread-safe)."""

    def __init__(self, path: Path, num_threads: int = 1, pool_size: int = 1, backend: Optional[str] = None):
        from cassava.edge.interpreter import interpreter_class

        cls = interpreter_class(backend)
        self._pool: queue.Queue = queue.Queue()
        for _ in range(max(1, pool_size)):
            with native_stderr_silenced(not debugging()):  # LiteRT's "Created ... XNNPACK delegate" line, from C++
                interpreter = cls(model_path=str(path), num_threads=num_threads)
                interpreter.allocate_tensors()
            self._pool.put(interpreter)
        self.size = int(interpreter.get_input_details()[0]["shape"][1])

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """float32 0-255 [N, size, size, 3] -> L2-normalised [N, 1280]."""
        interpreter = self._pool.get()
        try:
            into, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
            rows = []
            for image in pixels:
                interpreter.set_tensor(into, image[None].astype(np.float32))
                interpreter.invoke()
                rows.append(np.array(interpreter.get_tensor(out)[0], dtype=np.float32))
        finally:
            self._pool.put(interpreter)
        return normalise(np.stack(rows))


class LeafGate:
    def __init__(self, folder: Path, num_threads: int = 1, pool_size: int = 1, backend: Optional[str] = None):
        folder = Path(folder)
        self.folder = folder
        self.settings = json.loads((folder / GATE_FILE).read_text())
        self.references = np.load(folder / GATE_REFERENCES).astype(np.float32)
        self.embedder = Embedder(folder / GATE_TFLITE, num_threads, pool_size, backend)
        self.threshold = float(self.settings["threshold"])
        self.k = int(self.settings["k"])

    def distances(self, x: np.ndarray, input_scale: float) -> np.ndarray:
        return knn_distances(self.embedder.embed(gate_pixels(x, input_scale, self.embedder.size)),
                             self.references, self.k)

    def leaf_scores(self, distances: np.ndarray) -> np.ndarray:
        """How leaf-like, for clients: 1 at a reference photo, 0.5 at the threshold, towards 0 beyond it."""
        return np.clip(1.0 - np.asarray(distances) / (2.0 * self.threshold), 0.0, 1.0).astype(np.float32)


def has_gate(folder) -> bool:
    return folder is not None and (Path(folder) / GATE_FILE).is_file()


def load_gate(folder, num_threads: int = 1, pool_size: int = 1, backend: Optional[str] = None) -> LeafGate:
    if not has_gate(folder):
        raise CassavaError(f"{folder}: no leaf gate ({GATE_FILE}); convert with `cassava convert` (gate on by "
                           "default) or serve with --no-gate")
    return LeafGate(Path(folder), num_threads, pool_size, backend)
