"""Which confidence score should decide what the edge escalates? The curve on the real model and photos.

`cassava convert` makes the int8 copy of the real 256-px cassava CNN from ../shared/data/cassava-more, calibrated on
its stratified first half (150 photos, the converter's own split); this script takes the same split, runs the TF
model and the int8 copy on both halves, and for each score in shared/escalation.py (top probability, margin,
entropy) prints: on the held-out half B, the curve (agreement with TF vs fraction escalated) at a few fractions and
the fewest images that reach 99.5 % and 100 %; and the threshold chosen on half A for a target, applied to half B
(what a server would see). Skipped when ../shared is absent. Not part of `make bench` (no servers; ~1 min).

    python benchmarks/escalation_curve.py [INT8_DIR]      (default: converts into a temporary dir)
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import REPO  # noqa: E402

from cassava.shared.spec import TFLITE_FILE  # noqa: E402

REAL_MODEL = REPO.parent / "shared" / "models" / "cassava-cnn-256" / "saved_model"
PHOTOS = REPO.parent / "shared" / "data" / "cassava-more"
CLASSES = "cbb,cbsd,cgm,cmd,healthy"
TARGETS = (0.995, 1.0)
FRACTIONS = (0.02, 0.05, 0.08, 0.10, 0.15)


def convert(out: Path) -> None:
    command = [sys.executable, "-m", "cassava", "convert", "--model", str(REAL_MODEL), "--input-scale", "255",
               "--classes", CLASSES, "--calibration", str(PHOTOS), "--samples", "150", "--out", str(out),
               "--quantize", "int8", "--quiet"]
    subprocess.run(command, check=True)


def predictions(int8_dir: Path):
    from cassava.cloud.model import load_tf_classifier
    from cassava.edge.interpreter import load_tflite_classifier
    from cassava.shared.classifier import predict_pixels
    from cassava.shared.data import Sample, load_samples, preprocess_samples, stratified_split

    first, second = stratified_split(load_samples(str(PHOTOS)), 150)  # as convert splits --calibration
    tf = load_tf_classifier(str(REAL_MODEL), input_scale=255.0, classes=CLASSES.split(","))
    edge = load_tflite_classifier(int8_dir)
    halves = {}
    for name, samples in (("A", first), ("B", second)):
        kept, pixels, skipped = preprocess_samples(samples, [256], desc=f"half {name}", progress=False)
        assert not skipped, skipped
        halves[name] = (predict_pixels(tf, pixels[256]), predict_pixels(edge, pixels[256]))
    # B in two stratified quarters, as indices into B: a threshold chosen on held-out images, scored on others
    numbered = [Sample(str(i), s.label, None) for i, s in enumerate(second)]
    quarters = [[int(s.name) for s in part] for part in stratified_split(numbered, len(numbered) // 2)]
    return halves, quarters


def main() -> int:
    from cassava.shared.escalation import SCORES, confidence, curve, threshold_for

    if not REAL_MODEL.exists() or not PHOTOS.exists():
        print(f"skipped: {REAL_MODEL} or {PHOTOS} is absent")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        int8_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp) / "int8"
        if not (int8_dir / TFLITE_FILE).is_file():
            convert(int8_dir)
        halves, quarters = predictions(int8_dir)
    agreed = {h: tf.argmax(1) == edge.argmax(1) for h, (tf, edge) in halves.items()}
    n_b = len(agreed["B"])
    print(f"int8 alone agrees with TF on A {agreed['A'].sum()}/{len(agreed['A'])}, B {agreed['B'].sum()}/{n_b}")
    results = {}
    for score in SCORES:
        scores = {h: confidence(edge, score) for h, (_, edge) in halves.items()}
        points = curve(scores["B"], agreed["B"])
        row = {"at_fraction": {}, "fewest_for": {}, "chosen_on_A": {}}
        for fraction in FRACTIONS:  # the best agreement sending at most this fraction of B
            row["at_fraction"][fraction] = max(p["agreement"] for p in points if p["fraction_escalated"] <= fraction)
        for target in TARGETS:
            row["fewest_for"][target] = min(p["escalated"] for p in points if p["agreement"] >= target - 1e-12)
            threshold = threshold_for(scores["A"], agreed["A"], target)
            hard = scores["B"] < threshold
            row["chosen_on_A"][target] = {"threshold": threshold, "escalated": int(hard.sum()),
                                          "agreed": int((hard | agreed["B"]).sum())}
        row["cross_B"] = {}
        for target in TARGETS:  # choose on one quarter of B, apply to the other, both ways; summed
            sent = agreed_total = 0
            for choose, apply in (quarters, quarters[::-1]):
                threshold = threshold_for(scores["B"][choose], agreed["B"][choose], target)
                hard = scores["B"][apply] < threshold
                sent, agreed_total = sent + int(hard.sum()), agreed_total + int((hard | agreed["B"][apply]).sum())
            row["cross_B"][target] = {"escalated": sent, "agreed": agreed_total}
        results[score] = row
        at = ", ".join(f"{f:.0%}: {a:.1%}" for f, a in row["at_fraction"].items())
        fewest = ", ".join(f"{t:.1%}: {k}/{n_b}" for t, k in row["fewest_for"].items())
        chosen = "; ".join(f"target {t:.1%}: below {c['threshold']:.4f} sends {c['escalated']}/{n_b}, agrees "
                           f"{c['agreed']}/{n_b}" for t, c in row["chosen_on_A"].items())
        print(f"{score:8s} on B, best agreement sending at most {at}\n"
              f"{'':8s} fewest images sent on B to reach {fewest}\n"
              f"{'':8s} threshold chosen on A, applied to B: {chosen}\n"
              f"{'':8s} chosen on one stratified half of B, applied to the other (both ways, summed): "
              + "; ".join(f"target {t:.1%}: sends {c['escalated']}/{n_b}, agrees {c['agreed']}/{n_b}"
                          for t, c in row["cross_B"].items()))
    print(json.dumps(results, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
