"""What a device checks before a model folder may serve: its files are the ones written, it loads, and it answers
a few known images as its source model did.

`cassava convert` writes two files into each converted folder (`write_manifest`):

  cassava-manifest.json   sha256 and size of every file in the folder, the spec, the self-check's tolerance
  cassava-selfcheck.npz   a few preprocessed images (uint8, model input size) and the source model's probabilities

`verify(folder)` returns None or the first `Refusal` found, in this order (the reason is a metric label):

  manifest     no manifest (a converted edge folder must have one) or it cannot be read
  missing      a file the manifest lists is absent
  truncated    a file is shorter than written
  sha256       a file's sha256 differs (flipped bytes, a different file under the same name)
  report       conversion-report.json says the conversion was refused
  unloadable   the interpreter (or TensorFlow) cannot load it
  spec         input size, pixel range or classes differ from the serving model's, unless the operator allows it
  selfcheck    an answer's top-1 differs from the source's, or a probability differs by more than the tolerance

A cloud SavedModel may carry the same two files (write_manifest works on any folder); without them it is checked by
loading only. The manifest is its own file, not part of cassava-model.json: ModelSpec refuses unknown fields, and
the spec is what clients are given, the manifest what the device checks.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np

from .errors import CassavaError
from .preprocess import to_model_input
from .spec import REPORT_FILE, TFLITE_FILE
from .tiers import tier_for_model

MANIFEST_FILE = "cassava-manifest.json"
SELFCHECK_FILE = "cassava-selfcheck.npz"
SELFCHECK_IMAGES = 4
CANDIDATE_IMAGES = 32
# The copy's answers may differ from the source's (int8 rounding): allowed is what was measured at conversion plus
# this margin, on probabilities in [0, 1], with the same top-1 class on every self-check image.
TOLERANCE_MARGIN = 0.05


@dataclasses.dataclass
class Refusal:
    reason: str  # one word, the metric label
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def default_loader(folder: Path):
    """A converted TFLite folder loads on the edge's interpreter, anything else as a SavedModel (the tier registry)."""
    return tier_for_model(str(folder)).load_classifier(str(folder))


def _hashed_files(folder: Path):
    """Every file a model is made of: not the manifest itself, not logs, not dot entries (a ConfigMap mount's
    `..data` links, editors' swap files)."""
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or path.name == MANIFEST_FILE:
            continue
        if path.is_file() and path.suffix != ".log":
            yield relative.as_posix(), path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder, pixels: np.ndarray, source_probabilities: np.ndarray, load: Callable = None,
                   images: int = SELFCHECK_IMAGES) -> Path:
    """Write the self-check and the manifest into `folder` (after the model and its spec are in place).

    `pixels`: uint8 [N, H, W, 3] preprocessed images; `source_probabilities`: the source model's answers on them.
    The self-check keeps the first `images` on which the folder's model picks the source's top-1 class.
    """
    folder = Path(folder)
    classifier = (load or default_loader)(folder)
    spec = classifier.spec
    pixels = np.asarray(pixels[:CANDIDATE_IMAGES], np.uint8)  # enough to find `images` the copy agrees on
    expected = np.asarray(source_probabilities[:CANDIDATE_IMAGES], np.float32)
    got = classifier.predict(to_model_input(pixels, spec.input_scale))
    agree = np.flatnonzero(got.argmax(axis=1) == expected.argmax(axis=1))[:images]
    if not len(agree):
        raise CassavaError(f"{folder}: no self-check image on which the copy and its source agree")
    deviation = float(np.abs(got[agree] - expected[agree]).max())
    np.savez_compressed(folder / SELFCHECK_FILE, pixels=pixels[agree], probabilities=expected[agree])
    manifest = {
        "files": {name: {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
                  for name, path in _hashed_files(folder)},
        "spec": spec.to_json(),
        "selfcheck": {"file": SELFCHECK_FILE, "images": int(len(agree)), "measured_deviation": round(deviation, 6),
                      "tolerance": round(deviation + TOLERANCE_MARGIN, 6),
                      "rule": "same top-1 class as the source on every image, and every probability within "
                              "`tolerance` of the source's"},
    }
    path = folder / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(folder) -> Optional[dict]:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        for name, entry in files.items():
            # each entry a file of this folder, with its size and hash: a name that climbs out is not ours to read
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ValueError(f"{name!r} is outside the model folder")
            if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int)
                    and isinstance(entry.get("sha256"), str)):
                raise ValueError(f"{name!r} needs bytes and sha256")
        return manifest
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise CassavaError(f"{path}: not a valid manifest ({exc})") from None


def check_files(folder) -> Optional[Refusal]:
    """The checks that need no model loaded: manifest, files, conversion report."""
    folder = Path(folder)
    try:
        manifest = read_manifest(folder)
    except CassavaError as exc:
        return Refusal("manifest", str(exc))
    if manifest is None:
        if (folder / TFLITE_FILE).is_file():
            return Refusal("manifest", f"{folder} has no {MANIFEST_FILE} (convert it again with `cassava convert`)")
        return None  # a SavedModel without one: checked by loading only
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            return Refusal("missing", f"{path} is listed in {MANIFEST_FILE} but absent")
        size = path.stat().st_size
        if size < entry["bytes"]:
            return Refusal("truncated", f"{path} has {size} of its {entry['bytes']} bytes")
        if size != entry["bytes"] or sha256_of(path) != entry["sha256"]:
            return Refusal("sha256", f"{path}: sha256 differs from {MANIFEST_FILE}")
    report = folder / REPORT_FILE
    if report.is_file():
        try:
            accepted = json.loads(report.read_text()).get("accepted", True)
        except ValueError:
            return Refusal("report", f"{report} is not valid JSON")
        if accepted is False:
            return Refusal("report", f"{report} says the conversion was refused")
    return None


def check_spec(spec, serving_spec, allow_change: bool = False) -> Optional[Refusal]:
    """What clients were given must still hold: input size, pixel range and classes."""
    if serving_spec is None or allow_change:
        return None
    for field in ("input_size", "input_scale", "class_names"):
        old, new = getattr(serving_spec, field), getattr(spec, field)
        if old != new:
            return Refusal("spec", f"{field} changes from {old} to {new} (the serving model's clients would break; "
                                   "--allow-spec-change accepts it)")
    return None


def check_answers(classifier, folder) -> Optional[Refusal]:
    """Run the self-check recorded in the manifest, if there is one."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or not manifest.get("selfcheck"):
        return None
    selfcheck = manifest["selfcheck"]
    with np.load(folder / selfcheck["file"]) as data:
        pixels, expected = data["pixels"], data["probabilities"]
    got = classifier.predict(to_model_input(pixels, classifier.spec.input_scale))
    if got.shape != expected.shape:
        return Refusal("selfcheck", f"answers have shape {got.shape}, the source's {expected.shape}")
    wrong = int((got.argmax(axis=1) != expected.argmax(axis=1)).sum())
    deviation = float(np.abs(got - expected).max())
    if wrong or not deviation <= selfcheck["tolerance"]:
        return Refusal("selfcheck", f"{wrong} of {len(got)} top-1 answers differ from the source's, largest "
                                    f"probability difference {deviation:.3f} (tolerance {selfcheck['tolerance']:.3f})")
    return None


def load_verified(folder, load: Callable = None, serving_spec=None, allow_spec_change: bool = False
                  ) -> Tuple[Optional[object], Optional[Refusal]]:
    """-> (the folder's classifier, None) when every check passes, else (None, the first refusal)."""
    folder = Path(folder)
    refusal = check_files(folder)
    if refusal:
        return None, refusal
    try:
        classifier = (load or default_loader)(folder)
    except Exception as exc:  # CassavaError from the loaders, or whatever a broken file makes TF/LiteRT raise
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        return None, Refusal("unloadable", first)
    try:
        refusal = check_spec(classifier.spec, serving_spec, allow_spec_change) or check_answers(classifier, folder)
    except Exception as exc:  # a self-check the model cannot even run (wrong shapes, unreadable npz)
        refusal = Refusal("selfcheck", f"{type(exc).__name__}: {str(exc)[:300]}")
    if refusal:
        close = getattr(classifier, "close", None)
        if close:
            close()
        return None, refusal
    return classifier, None


def verify(folder, serving_spec=None, allow_spec_change: bool = False, load: Callable = None) -> Optional[Refusal]:
    """None when `folder` may serve, else why not (see the module doc)."""
    return load_verified(folder, load, serving_spec, allow_spec_change)[1]
