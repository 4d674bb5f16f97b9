"""int8 that agrees: plain int8 vs `cassava convert --target-agreement 0.99` on the real 256-px cassava CNN.

../shared/data/cassava-more (300 photos) is split here three ways, stratified by class and disjoint: 100 calibrate
int8, 100 are the converter's verification images (the ones `--target-agreement` *chooses* its copy on), and 100
are scored here and seen by nothing else. Every copy is made by the converter's function API
(`cassava.edge.convert.convert`, the same code as the command) with the same calibration and verification images.
Measured in one run, on the 100 images nothing chose on: top-1 agreement with the TF model (with its 95% Wilson
interval), accuracy against the labels, file size, and per-image latency at 1 thread (the copies and float32 TFLite
timed in turn, image by image). The search's own score on its selection images is printed beside it, as what it is.
Skipped, with a message, when ../shared is absent.

    python benchmarks/bench_quant.py          (BENCH_QUANT_TARGET=0.99, BENCH_ROUNDS=3)
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import REPO  # noqa: E402

REAL_MODEL = REPO.parent / "shared" / "models" / "cassava-cnn-256" / "saved_model"
PHOTOS = REPO.parent / "shared" / "data" / "cassava-more"
CLASSES = "cbb,cbsd,cgm,cmd,healthy"
TARGET = float(os.environ.get("BENCH_QUANT_TARGET", "0.99"))
SPLIT = {"calibration": 100, "selection": 100}  # the rest (100 of 300) is scored here, and only here
# Targets (issue 13): agree with TF on >= 99 % of held-out photos; move accuracy by at most 1 point; keep the
# file at most 0.4x float TFLite (int8 weights are 1/4, so a few float layers fit); be no slower than float TFLite.
TARGET_ACCURACY_POINTS = 1.0
TARGET_SIZE = 0.4
TARGET_LATENCY = 1.0


def split_photos(root: Path):
    """-> {calibration, selection: a class-folder tree of links}, and the evaluation samples: disjoint, stratified."""
    from cassava.shared.data import load_samples, stratified_split

    rest = load_samples(str(PHOTOS))
    folders = {}
    for part, count in SPLIT.items():
        chosen, rest = stratified_split(rest, count)
        folders[part] = root / part
        for sample in chosen:
            link = folders[part] / sample.label / Path(str(sample.source)).name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(str(sample.source)).resolve())
    return folders, rest


def convert(out: Path, folders: dict, **options) -> dict:
    from cassava.edge.convert import ConvertOptions
    from cassava.edge.convert import convert as convert_model

    started = time.time()
    report = convert_model(str(REAL_MODEL), out, ConvertOptions(
        input_scale=255.0, classes=tuple(CLASSES.split(",")), calibration=[str(folders["calibration"])],
        verify_data=[str(folders["selection"])], quiet=True, **options))
    report["seconds"] = round(time.time() - started, 1)
    return report


def main() -> dict:
    if not (REAL_MODEL.is_dir() and PHOTOS.is_dir()):
        print(f"skipped: {REAL_MODEL} or {PHOTOS} is absent (../shared holds the third-party test data)")
        return {}
    import numpy as np

    from cassava.cloud.model import load_tf_classifier
    from cassava.edge.interpreter import TFLiteClassifier, load_tflite_classifier
    from cassava.shared.data import preprocess_samples
    from cassava.shared.evaluate.measure import median_ms_in_turn
    from cassava.shared.evaluate.metrics import wilson_interval
    from cassava.shared.formatting import count_text, size_text
    from cassava.shared.preprocess import to_model_input
    from cassava.shared.spec import TFLITE_FILE

    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    target_name = f"int8 --target-agreement {TARGET}"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folders, evaluation = split_photos(tmp / "photos")
        reports = {"int8": convert(tmp / "int8", folders),
                   target_name: convert(tmp / "target", folders, target_agreement=TARGET),
                   "float32": convert(tmp / "float32", folders, quantize="none")}
        dirs = dict(zip(reports, (tmp / "int8", tmp / "target", tmp / "float32")))
        # by file name: the converter saw the photos through links in tmp/photos
        chose_on = {Path(name).name for r in reports.values()
                    for name in r["data"]["verification_files"] + r["data"]["calibration_files"]}
        assert not chose_on & {Path(s.name).name for s in evaluation}, "a scored image was also converted on"
        kept, pixels, skipped = preprocess_samples(evaluation, [256], progress=False)
        if skipped:
            raise RuntimeError("; ".join(skipped))
        classes = CLASSES.split(",")
        truth = np.array([classes.index(s.label) for s in kept])
        x = to_model_input(pixels[256], 255.0)
        tf_top = load_tf_classifier(str(REAL_MODEL), input_scale=255, classes=tuple(classes)).predict(x).argmax(1)
        tf_right = int(np.sum(tf_top == truth))
        spec = load_tflite_classifier(dirs["float32"]).spec
        ms = median_ms_in_turn({name: TFLiteClassifier(d / TFLITE_FILE, spec, num_threads=1)
                                for name, d in dirs.items()}, x[:30], rounds)
        rows = {}
        for name, folder in dirs.items():
            top = load_tflite_classifier(folder).predict(x).argmax(1)
            agree = int(np.sum(top == tf_top))
            rows[name] = {"agree": agree, "n": len(x), "ci95": wilson_interval(agree, len(x)),
                          "right": int(np.sum(top == truth)), "bytes": (folder / TFLITE_FILE).stat().st_size,
                          "ms": ms[name], "seconds": reports[name]["seconds"]}
    selective = reports[target_name]["selective"]
    selection = reports[target_name]["verification"]
    print(f"Real model {REAL_MODEL.parent.name}, scored on {len(x)} photos of {PHOTOS.name} that nothing chose on "
          f"({SPLIT['calibration']} others calibrated, {SPLIT['selection']} others verified and selected); "
          f"TF right on {tf_right}/{len(x)}")
    print(f"{'copy':<32} {'agreement with TF (95% CI)':<36} {'right':>7} {'size':>9} {'ms/img':>7} {'convert s':>9}")
    for name, r in rows.items():
        print(f"{name:<32} {count_text(r['agree'], r['n'], r['ci95']):<36} "
              f"{r['right']:>4}/{r['n']} {size_text(r['bytes']):>9} {r['ms']:>7.2f} {r['seconds']:>9}")
    print(f"(selection score, not held out: the chosen copy agreed on "
          f"{count_text(selection['agree'], selection['images'], selection['agreement_ci95'])} "
          "of the images the search chose it on)")
    print(f"--target-agreement chose: {selective['chosen']} ({'met' if selective['met'] else 'MISSED'}); "
          f"kept in float32: {', '.join(n.split(';')[0] for n in selective['kept_in_float32']) or 'nothing'}")
    for trial in selective["trials"]:
        print(f"  tried {trial['name']}: {trial['agree']}/{trial['images']}, {trial['bytes'] / 1024:.0f} KB")

    chosen, plain, float32 = rows[target_name], rows["int8"], rows["float32"]
    note = f"real 256-px CNN, {len(x)} photos nothing chose on"
    return {
        "rows": rows, "tf_right": tf_right, "selective_choice": selective["chosen"],
        "kept_in_float32": selective["kept_in_float32"],
        "selection_score": {"agree": selection["agree"], "n": selection["images"]},
        "ratios": [
            {"name": f"--target-agreement {TARGET}: top-1 agreement with TF", "value": chosen["agree"] / chosen["n"],
             "target": TARGET, "note": f"{note}, {chosen['agree']}/{chosen['n']}, 95% CI "
                                       f"{chosen['ci95'][0]:.1%}-{chosen['ci95'][1]:.1%}; chose {selective['chosen']}"},
            {"name": "plain int8: top-1 agreement with TF", "value": plain["agree"] / plain["n"], "target": TARGET,
             "note": f"{note}, {plain['agree']}/{plain['n']}"},
            {"name": f"--target-agreement {TARGET}: |accuracy - TF accuracy|", "value": abs(chosen["right"] - tf_right)
             / len(x) * 100, "target": TARGET_ACCURACY_POINTS, "better": "lower", "unit": " points",
             "note": f"{chosen['right']} vs {tf_right} of {len(x)} right"},
            {"name": f"--target-agreement {TARGET}: size ÷ float TFLite", "value": chosen["bytes"] / float32["bytes"],
             "target": TARGET_SIZE, "better": "lower", "unit": "×",
             "note": f"{chosen['bytes'] // 1024} vs {float32['bytes'] // 1024} KB; "
                     f"plain int8 {plain['bytes'] // 1024} KB"},
            {"name": f"--target-agreement {TARGET}: latency ÷ float TFLite, 1 thread",
             "value": chosen["ms"] / float32["ms"],
             "target": TARGET_LATENCY, "better": "lower", "unit": "×",
             "note": f"median {chosen['ms']:.2f} vs {float32['ms']:.2f} ms; plain int8 {plain['ms']:.2f} ms"},
        ],
    }


if __name__ == "__main__":
    main()
