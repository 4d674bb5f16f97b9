"""`cassava convert`'s gate step: the cached gate copied into the folder, its bound and the measured rejection of
non-leaf photos (by kind) added to the conversion report."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from cassava.shared.spec import REPORT_FILE

from .build import GATE_PHOTOS, cached_gate, install_gate
from .gate import GATE_FILE, GATE_REFERENCES, GATE_TFLITE, LeafGate

NEGATIVES = Path("..") / "shared" / "data" / "not-cassava"  # measured when present (../shared beside the checkout)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def gate_text(section: dict) -> str:
    """The conversion report's gate section in a few lines (what `cassava convert` prints)."""
    bound = section["bound"]
    lines = [f"  leaf gate        threshold {section['threshold']:.4f} (k={section['k']}, {section['references']} "
             f"reference photos); set on {bound['held_out']} held-out cassava photos: real leaves turned away "
             f"<= {bound['expected_rate_at_most']:.1%} expected, <= {bound['rate_at_most_with_confidence']:.1%} "
             f"with {bound['confidence']:.0%} confidence"]
    negatives = section.get("not_cassava")
    for kind, row in (negatives or {}).get("by_kind", {}).items():
        lines.append(f"  not cassava      {kind}: {row['unknown']}/{row['images']} = {row['rate']:.0%} unknown")
    return "\n".join(lines)


def gate_files(out: Path) -> list:
    return [Path(out) / name for name in (GATE_TFLITE, GATE_REFERENCES, GATE_FILE)]


def rejection_by_kind(gate: LeafGate, folder: Path, spec, progress: bool = False) -> dict:
    """{kind (sub-folder): {"images", "unknown", "rate"}} for a folder of photos that are not cassava leaves."""
    from cassava.shared.data import Sample, preprocess_samples
    from cassava.shared.preprocess import to_model_input

    kinds = {}
    for kind in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(p for p in kind.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        kept, pixels, _ = preprocess_samples([Sample(str(f), None, f) for f in files], [spec.input_size],
                                             desc=kind.name, progress=progress, leave=False)
        if not kept:
            continue
        distances = gate.distances(to_model_input(pixels[spec.input_size], spec.input_scale), spec.input_scale)
        unknown = int(np.sum(distances > gate.threshold))
        kinds[kind.name] = {"images": len(kept), "unknown": unknown, "rate": unknown / len(kept)}
    return kinds


def gate_samples(options, spec, verification: Sequence) -> list:
    """The cassava photos the gate is built from: the conversion's calibration DATA in full (every mode, so all
    conversions from the same photos share one cached gate), else its verification photos; at most GATE_PHOTOS,
    stratified by class."""
    from cassava.shared.data import load_samples, stratified_split

    data = options.calibration or (["standin:train"] if spec.standin else None)
    samples = load_samples(data) if data else list(verification)
    return stratified_split(samples, GATE_PHOTOS)[0] if len(samples) > GATE_PHOTOS else samples


def add_gate(out: Path, spec, samples: Sequence, alpha: float, negatives: Optional[Path],
             notify: Callable[[str], None], progress: bool = False) -> dict:
    """Build (or reuse) the gate for these cassava photos, copy it into `out`, and record it in the report."""
    from cassava.shared.data import preprocess_samples
    from cassava.shared.preprocess import to_model_input

    kept, pixels, skipped = preprocess_samples(samples, [spec.input_size], desc="reading the leaf gate's photos",
                                               progress=progress, leave=False)
    for line in skipped:
        notify(line)
    x = to_model_input(pixels[spec.input_size], spec.input_scale)
    names, labels = [s.name for s in kept], [s.label for s in kept]
    settings = install_gate(cached_gate(names, labels, x, spec, alpha, notify), out)
    section = {key: settings[key] for key in ("threshold", "bound", "k", "input_size", "references",
                                              "int8_vs_float_cosine", "backbone")}
    section["photos"] = len(names)
    negatives = Path(negatives) if negatives else (NEGATIVES if NEGATIVES.is_dir() else None)
    if negatives and negatives.is_dir():
        section["not_cassava"] = {"data": str(negatives),
                                  "by_kind": rejection_by_kind(LeafGate(out), negatives, spec, progress)}
    else:
        section["not_cassava"] = None  # nothing to measure on here: the bound above needs no such photos
    report_path = out / REPORT_FILE
    report = json.loads(report_path.read_text())
    report["leaf_gate"] = section
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    return section
