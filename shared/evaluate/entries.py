"""The models in a comparison: the cloud model, its TFLite copies, or running V2 servers, each an `Entry`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

from ..errors import CassavaError
from ..spec import TFLITE_FILE, model_kind, read_spec_file

CLOUD_NAME = "cloud TF"


class Entry:
    """One model in the comparison: its name, what it is, and how to run it."""

    def __init__(self, name: str, path: str, fmt: str, kind: str, classifier=None, size_bytes: Optional[int] = None,
                 overrides: Optional[dict] = None):
        self.name, self.path, self.format, self.kind = name, path, fmt, kind
        self.classifier = classifier  # for TFLite: num_threads = all cores
        self.size_bytes = size_bytes
        self.spec = classifier.spec if classifier is not None else None
        self.overrides = overrides or {}  # input_scale / classes to load it again (TFLite at 1 thread)


def disk_size(path) -> Optional[int]:
    """Bytes on disk: a .tflite file, the model.tflite in a converted folder, or a whole SavedModel folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if (path / TFLITE_FILE).is_file():
        return (path / TFLITE_FILE).stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return None


def _tflite_variant(path: Path, spec) -> str:
    info = (spec.tflite or {}) if spec is not None else {}
    for key in ("quantize", "quantization", "variant", "mode"):
        if isinstance(info.get(key), str):
            return info[key]
    stem = path.parent.name if path.name == TFLITE_FILE else path.stem if path.suffix == ".tflite" else path.name
    return stem


def _tflite_format(variant: str, spec) -> str:
    io = ((spec.tflite or {}).get("io") if spec is not None else None) or None
    described = {"int8": "TFLite int8 (full integer" + (f", {io} I/O)" if io else ")"),
                 "dynamic": "TFLite dynamic range (int8 weights, float maths)",
                 "float16": "TFLite float16 weights", "none": "TFLite float32"}
    return described.get(variant, f"TFLite {variant}")


def load_cloud(model: str, input_scale=None, classes=None) -> Entry:
    from ..classifier import load_classifier
    from ..tiers import tool

    overrides = {"input_scale": input_scale, "classes": classes}
    if model_kind(model) == "tflite":
        classifier = load_classifier(model, num_threads=os.cpu_count(), **overrides)
        return Entry(CLOUD_NAME.replace("TF", "TFLite"), model, "TFLite", "tflite", classifier, disk_size(model),
                     overrides)
    classifier = load_classifier(model, **overrides)
    path = tool("resolve_model_path")(model)
    return Entry(CLOUD_NAME, str(model), "TF SavedModel (float32)", "tf", classifier, disk_size(path), overrides)


def edge_overrides(path: str, cloud: Entry) -> dict:
    """A bare .tflite without cassava-model.json borrows the cloud model's pixel range and classes."""
    if not Path(path).exists():
        raise CassavaError(f"--edge-model {path}: no such file or folder")
    if model_kind(path) != "tflite":
        raise CassavaError(f"--edge-model {path}: not a .tflite file or a folder with {TFLITE_FILE} "
                           "(run `cassava convert`)")
    if read_spec_file(path) is None:
        return {"input_scale": cloud.spec.input_scale, "classes": cloud.spec.class_names}
    return {}


def edge_entries(paths: List[str], cloud: Entry) -> List[Entry]:
    from ..classifier import load_classifier

    entries, seen = [], set()
    for path in paths:
        overrides = edge_overrides(path, cloud)
        classifier = load_classifier(path, num_threads=os.cpu_count(), **overrides)
        variant = _tflite_variant(Path(path), classifier.spec)
        name = f"edge {variant}"
        while name in seen:
            name += "'"
        seen.add(name)
        entries.append(Entry(name, str(path), _tflite_format(variant, classifier.spec), "tflite", classifier,
                             disk_size(path), overrides))
    return entries


def parse_via(text: str) -> List[tuple]:
    pairs = []
    for part in text.split(","):
        name, sep, url = part.partition("=")
        if not sep or not name.strip() or not url.strip():
            raise CassavaError(f"--via {text}: expected NAME=URL[,NAME=URL], "
                               "e.g. local=http://127.0.0.1:8080,edge=http://127.0.0.1:9080")
        pairs.append((name.strip(), url.strip()))
    if len({n for n, _ in pairs}) != len(pairs):
        raise CassavaError(f"--via {text}: names must differ")
    return pairs


def via_entries(text: str, classes=None) -> List[Entry]:
    """One entry per running server, each spoken to over V2 REST by the client's own backend (uint8 pixels)."""
    try:
        from ..client.backends import ServerBackend
    except ImportError:
        raise CassavaError("--via needs the HTTP client (pip install 'cassava-cloud-edge[client]'); "
                           "compare in-process instead") from None
    entries = []
    for name, url in parse_via(text):
        classifier = ServerBackend(url, wire="uint8", classes=classes, strict_classes=True)
        classifier.spec.description = f"{classifier.info.name} at {url}"
        entries.append(Entry(name, url, "V2 server (REST, uint8 pixels)", "server", classifier, None))
    return entries
