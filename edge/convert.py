"""`cassava convert`: the cloud model -> a verified TFLite copy for the edge (int8, dynamic, float16 or float32).

Conversion is TensorFlow's own `tf.lite.TFLiteConverter`. What this adds: the calibration images go through the
shared preprocessing, the result is checked against the source model on images it was not calibrated on, and
a copy that disagrees with its source is refused, not written. Verification uses every held-out image there is
(one folder is split here, stratified by class) and reports agreement with its 95% Wilson interval.
`--target-agreement` keeps the layers that cost agreement in float32 (edge/selective.py). Output, in DIR:
model.tflite, cassava-model.json (everything the edge needs to serve it) and conversion-report.json.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np

from cassava.shared.errors import CassavaError
from cassava.shared.labels import parse_class_list
from cassava.shared.manifest import write_manifest
from cassava.shared.spec import SPEC_FILE, STANDIN_NOTE, TFLITE_FILE

MODES = ("int8", "dynamic", "float16", "none")
IO_TYPES = ("uint8", "int8", "float32")
REPORT_FILE = "conversion-report.json"
LOG_FILE = "converter.log"  # what TensorFlow's converter printed
VARIANT_NAMES = {"int8": "int8", "dynamic": "dynamic-range int8 weights", "float16": "float16 weights",
                 "none": "float32"}
# Ops that only move between float and integer; any other op reading or writing float32 in an int8 model runs in float.
CAST_OPS = {"QUANTIZE", "DEQUANTIZE"}
# The refusal floor, chosen from measurements (edge/README.md): int8 copies of the real 256-px cassava CNN agreed with
# it on 141-145 of 150 held-out photos (94-97 %), dynamic-range on 147-149, float16 on 150; the failures this gate
# exists for agree on under 50 % (NaN from a Keras 3 model saved the wrong way, calibration on black images).
MIN_AGREEMENT = 0.95
DEFAULT_SAMPLES = 200


def add_arguments(parser):
    parser.add_argument("--model", required=True,
                        help="TF Hub handle, SavedModel dir, or 'standin' (stand-in model, synthetic data)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for model.tflite, cassava-model.json and the report")
    parser.add_argument("--quantize", choices=MODES, default="int8",
                        help="int8: full-integer (needs calibration images); dynamic: int8 weights; "
                             "float16: half-size weights; none: float32")
    parser.add_argument("--calibration", nargs="+", metavar="DATA",
                        help="images calibrating int8 (folder, files, glob, standin:train); "
                             "default for the stand-in: standin:train")
    parser.add_argument("--samples", type=int,
                        help="calibration images (default 200; when one DATA must both calibrate and verify, at most "
                             "half of it, so that the other half verifies)")
    parser.add_argument("--verify-data", nargs="+", metavar="DATA",
                        help="held-out images to compare source and TFLite on (default: the stand-in's validation "
                             "split; else the --calibration images not used for calibration: one folder is split in "
                             "two, stratified by class, and the report says so)")
    parser.add_argument("--verify-samples", type=int, default=0,
                        help="verify on at most this many images (0 = every held-out image)")
    parser.add_argument("--io", choices=IO_TYPES, help="int8 model input/output type (default uint8; other modes, and "
                                                      "--target-agreement, are float32)")
    parser.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT,
                        help=f"refuse the copy when the 95%% Wilson interval of its top-1 agreement with the source "
                             f"lies wholly below this (why {MIN_AGREEMENT}: healthy int8 copies of a real cassava "
                             "CNN agreed on 94-97%% of 150 held-out photos, broken ones on under 50%%; see "
                             "edge/README.md)")
    parser.add_argument("--target-agreement", type=float, metavar="A",
                        help="int8: keep the layers that cost agreement in float32 (TFLite's QuantizationDebugger, "
                             "fewest first) until held-out top-1 agreement reaches A, e.g. 0.99; falls back to "
                             "dynamic-range when that is the smaller copy meeting A. Reports what was kept and its "
                             "cost")
    parser.add_argument("--input-scale", type=float, choices=(1.0, 255.0),
                        help="model pixel range: 1 = [0,1], 255 = raw 0-255")
    parser.add_argument("--classes", type=parse_class_list,
                        help="class names in model output order, e.g. cbb,cbsd,cgm,cmd,healthy")
    parser.add_argument("--allow-float-fallback", action="store_true",
                        help="int8: keep ops that have no int8 kernel in float32 instead of failing")
    parser.add_argument("--select-tf-ops", action="store_true",
                        help="allow TensorFlow ops TFLite lacks (the edge then needs the Flex delegate, which "
                             "ai-edge-litert and tflite-runtime do not include)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def check_arguments(args) -> str:
    """-> the I/O type; every contradiction is one line before TensorFlow loads."""
    if args.samples is not None and args.samples < 1:
        raise CassavaError("--samples must be at least 1")
    if args.verify_samples < 0:
        raise CassavaError("--verify-samples must be 0 (all) or more")
    if not 0.0 <= args.min_agreement <= 1.0:
        raise CassavaError("--min-agreement is a fraction between 0 and 1, e.g. 0.95")
    if args.target_agreement is not None:
        if not 0.0 < args.target_agreement <= 1.0:
            raise CassavaError("--target-agreement is a fraction between 0 and 1, e.g. 0.99")
        if args.quantize != "int8":
            raise CassavaError("--target-agreement applies to --quantize int8 (it decides which layers stay in float)")
        if args.io not in (None, "float32"):
            raise CassavaError(f"--io {args.io}: --target-agreement writes float32 I/O models (TFLite's "
                               "QuantizationDebugger quantizes inside the model, not at its edges)")
        return "float32"
    if args.quantize != "int8":
        if args.io not in (None, "float32"):
            raise CassavaError(f"--io {args.io} needs --quantize int8 "
                               "(only full-integer models have integer input and output)")
        if args.allow_float_fallback:
            raise CassavaError("--allow-float-fallback applies to --quantize int8 only")
        return "float32"
    return args.io or "uint8"


# ---------------------------------------------------------------------------------------------- data


def plan_data(args, spec):
    """-> (calibration samples or None, verification samples, what each is and where it came from).

    Verification uses every held-out image the data allows. With one DATA for both jobs (no --verify-data, not the
    stand-in), it is split here: stratified by class, disjoint, calibration at most half of it."""
    from cassava.shared.data import describe, load_samples, stratified_split

    calibration_data = args.calibration or (["standin:train"] if spec.standin else None)
    if args.quantize == "int8" and not calibration_data:
        raise CassavaError("--quantize int8 needs --calibration DATA: about 200 photos like the ones the model will "
                           "classify (a class folder, files or a glob); the rest of them verify the result")
    pool = load_samples(calibration_data) if calibration_data else []
    calibration, split = None, None
    if args.verify_data:
        verify, source = load_samples(args.verify_data), describe(args.verify_data)
    elif spec.standin:
        verify, source = load_samples("standin"), "standin (the stand-in's validation split)"
    elif args.quantize != "int8" and pool:
        verify, source = pool, describe(calibration_data)  # nothing calibrates: every image verifies
    elif args.quantize == "int8":
        if len(pool) < 2:
            raise CassavaError(f"--calibration {describe(calibration_data)}: one image cannot both calibrate and "
                               "verify; pass more photos or --verify-data DATA")
        count = min(args.samples or DEFAULT_SAMPLES, len(pool) // 2)
        calibration, verify = stratified_split(pool, count)
        source = f"{describe(calibration_data)} (the images not used for calibration)"
        split = (f"{describe(calibration_data)} split by this command, stratified by class: {len(calibration)} images "
                 f"calibrate, the other {len(verify)} verify (disjoint)")
        if args.samples and args.samples > count:
            split += f"; --samples {args.samples} capped at half of the {len(pool)} images"
    else:
        raise CassavaError("nothing to verify on: pass --verify-data DATA (held-out photos) to compare the TFLite copy "
                           "with the source")
    if args.quantize == "int8" and calibration is None:
        calibration = stratified_split(pool, args.samples or DEFAULT_SAMPLES)[0]

    used = {s.name for s in calibration or []}
    held_out = [s for s in verify if s.name not in used]  # never verify on an image that calibrated the model
    if not held_out:
        raise CassavaError(f"--verify-data {source}: every image was also used for calibration; pass other photos")
    overlap = len(verify) - len(held_out)
    if args.verify_samples and args.verify_samples < len(held_out):
        held_out = stratified_split(held_out, args.verify_samples)[0]
    return calibration, held_out, {"calibration": describe(calibration_data) if calibration else None,
                                   "verification": source, "split": split, "calibration_images_excluded": overlap,
                                   "calibration_files": [s.name for s in calibration or []],
                                   "verification_files": [s.name for s in held_out]}


def pixels_of(samples, size: int, what: str, progress: bool):
    """Preprocess samples (the shared path); an unreadable image is reported on stderr and counted, never dropped
    silently."""
    from cassava.shared.data import preprocess_samples

    kept, pixels, skipped = preprocess_samples(samples, [size], desc=what, progress=progress, leave=False)
    for line in skipped:
        print(line, file=sys.stderr)
    if not kept:
        raise CassavaError(f"{what}: none of the {len(samples)} images could be read")
    return kept, pixels[size], len(skipped)


# ---------------------------------------------------------------------------------------------- conversion


def make_converter(tf, path: Path, spec, args, io: str, calibration_x, stderr=None):
    loaded = tf.saved_model.load(str(path))
    if spec.signature in (getattr(loaded, "signatures", None) or {}):
        converter = tf.lite.TFLiteConverter.from_saved_model(str(path), signature_keys=[spec.signature])
    else:  # a TF Hub module without a serving signature: convert its call on [N, H, W, 3] floats
        size = spec.input_size
        function = tf.function(lambda x: loaded(x)).get_concrete_function(
            tf.TensorSpec([None, size, size, 3], tf.float32))
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function], loaded)
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if args.quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if args.quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if args.quantize == "int8":
        converter.representative_dataset = representative_dataset(calibration_x, not args.quiet, stderr or sys.stderr)
        if not args.allow_float_fallback:
            ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io != "float32":
            converter.inference_input_type = converter.inference_output_type = getattr(tf, io)
    if args.select_tf_ops:
        ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
    converter.target_spec.supported_ops = ops
    return converter


def representative_dataset(x: np.ndarray, progress: bool, stream):
    def generate():
        from tqdm import tqdm

        for i in tqdm(range(len(x)), desc="calibrating", unit="img", file=stream, disable=not progress, leave=False):
            yield [x[i:i + 1]]

    return generate


def explain_failure(exc: Exception) -> str:
    """The converter's pages of MLIR -> one line saying which ops are the problem and what to do."""
    text = str(exc)
    no_int8 = sorted(set(re.findall(r"Quantization not yet supported for op: '(\w+)'", text)))
    if no_int8:
        return (f"full-integer int8 failed: no int8 kernel for op(s) {', '.join(no_int8)}; "
                "--allow-float-fallback keeps them in float32")
    flex = (re.findall(r"TF Select ops: ([\w, ]+)", text)
            or re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text))
    if flex:
        names = sorted({n.strip() for group in flex for n in group.split(",") if n.strip()})
        return (f"op(s) {', '.join(names)} are TensorFlow ops with no TFLite builtin; --select-tf-ops keeps them "
                "(the edge then needs the Flex delegate)")
    if "Flex delegate" in text or "Select TensorFlow op" in text:
        return ("int8 calibration runs the model in a TFLite interpreter, and none here has the Flex delegate its "
                "TF ops need; with --select-tf-ops use --quantize dynamic, float16 or none")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"TFLite conversion failed ({type(exc).__name__}: {first[:300]})"


def describe_model(interpreter_cls, content: bytes, spec):
    """-> (input detail, output detail, op names, float32 ops) read from the converted model, before it is written."""
    interpreter = interpreter_cls(model_content=content)
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) > 1 or len(outputs) > 1:  # name them through the signature, as the source spec does
        runner = interpreter.get_signature_runner(spec.signature)
        input_details, output_details = runner.get_input_details(), runner.get_output_details()
        inputs = [input_details[spec.input_key]] if spec.input_key else list(input_details.values())
        outputs = [output_details[spec.output_key]] if spec.output_key else list(output_details.values())
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    ops, float_ops = [], []
    for op in interpreter._get_ops_details():
        ops.append(op["op_name"])
        tensors = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        if op["op_name"] not in CAST_OPS and any(dtypes.get(i) == np.float32 for i in tensors):
            float_ops.append(op["op_name"])
    return inputs[0], outputs[0], ops, sorted(set(float_ops))


# ---------------------------------------------------------------------------------------------- verification


def source_predictions(source, pixels, batch_size: int = 32, progress: bool = True) -> np.ndarray:
    return _predict(source, pixels, "source model", batch_size, progress)


def _predict(model, pixels, what: str, batch_size: int, progress: bool) -> np.ndarray:
    from tqdm import tqdm

    from cassava.shared.preprocess import to_model_input

    scores = []
    for start in tqdm(range(0, len(pixels), batch_size), desc=f"verifying ({what})", unit="batch", file=sys.stderr,
                      disable=not progress, leave=False):
        scores.append(model.predict(to_model_input(pixels[start:start + batch_size], model.spec.input_scale)))
    return np.concatenate(scores)


def verify(expected: np.ndarray, tflite, pixels, labels, class_names, progress: bool = True) -> dict:
    """Top-1 agreement of the TFLite copy with the source's predictions `expected`, with its 95% Wilson interval."""
    from cassava.shared.evaluate.metrics import wilson_interval

    got = _predict(tflite, pixels, "TFLite copy", 32, progress)
    finite = np.all(np.isfinite(got), axis=1)
    agree = int(np.sum((expected.argmax(1) == got.argmax(1)) & finite))
    diff = np.abs(got - expected)
    result = {"images": len(pixels), "agree": agree, "top1_agreement": agree / len(pixels),
              "agreement_ci95": list(wilson_interval(agree, len(pixels))),
              "non_finite_outputs": int(np.sum(~finite)),
              "max_abs_diff": float(diff.max()) if finite.all() else None,
              "mean_abs_diff": float(diff.mean()) if finite.all() else None}
    known = [i for i, label in enumerate(labels) if label in class_names]
    if known:
        truth = np.array([class_names.index(labels[i]) for i in known])
        result["labelled"] = len(known)
        result["source_right"] = int(np.sum(expected[known].argmax(1) == truth))
        result["tflite_right"] = int(np.sum(got[known].argmax(1) == truth))
    return result


def saved_model_sizes(path: Path) -> dict:
    files = [p for p in path.rglob("*") if p.is_file()]
    variables = sum(p.stat().st_size for p in files if "variables" in p.relative_to(path).parts)
    return {"source_variables_bytes": variables, "source_saved_model_bytes": sum(p.stat().st_size for p in files)}


def _kb(n) -> str:
    return f"{n / 1024:.1f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MB"


def _op_counts(ops) -> str:
    counts = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    return ", ".join(f"{op} x{n}" if n > 1 else op for op, n in sorted(counts.items()))


def _interval(v: dict) -> str:
    low, high = v["agreement_ci95"]
    return f"{v['agree']}/{v['images']} = {v['top1_agreement']:.1%} (95% CI {low:.1%}-{high:.1%})"


def selective_rows(sel: dict) -> list:
    cost = sel["cost"]
    kept = sel["kept_in_float32"]
    chosen = f"{sel['chosen']}: " + ("target met" if sel["met"] else "TARGET MISSED, best found kept")
    rows = [("target", f"top-1 agreement >= {sel['target']:.1%} on the held-out images; {chosen} "
                       f"({len(sel['trials'])} variants tried)")]
    if sel["quantize"] == "int8":
        rows.append(("kept in float32", f"{len(kept)} layer(s): " + "; ".join(_short(n) for n in kept) if kept
                     else "nothing (plain int8 meets the target)"))
    ms = cost["ms_per_image"]
    rows.append(("cost", f"{_kb(cost['bytes'])} vs plain int8 {_kb(cost['int8_bytes'])} and float32 "
                         f"{_kb(cost['float32_bytes'])} ({cost['bytes'] / cost['float32_bytes']:.2f}x float32); "
                         f"{ms['chosen']:.2f} ms/image vs int8 {ms['int8']:.2f}, float32 {ms['float32']:.2f} "
                         "(1 thread, median, this machine)"))
    return rows


def _short(layer: str) -> str:
    """TFLite names a fused layer by every op folded into it, separated by ';': the first says which it is."""
    return layer.split(";")[0]


def table(report: dict) -> str:
    v, s, io = report["verification"], report["sizes"], report["io"]
    input_scale = (f" (input scale {io['input']['scale']:.6g}, zero point {io['input']['zero_point']})"
                   if io['input']['scale'] else "")
    rows = [
        ("quantize", f"{report['quantize']}, I/O {io['input']['dtype']} -> {io['output']['dtype']}" + input_scale),
        ("calibration", f"{report['calibration']['images']} images from {report['calibration']['data']}"
                        if report["calibration"] else "none (not int8)"),
    ]
    if report["data"].get("split"):
        rows.append(("split", report["data"]["split"]))
    rows.append(("verified on", f"{v['images']} held-out images from {report['data']['verification']}" if v
                 else "not verified"))
    if v:
        verdict = "OK" if report["accepted"] else "REFUSED"
        rows.append(("top-1 agreement", f"{_interval(v)}  minimum {report['min_agreement']:.1%}  {verdict}"))
        rows.append(("|Δ probability|", f"max {v['max_abs_diff']:.4f}, mean {v['mean_abs_diff']:.4f}"
                     if v["max_abs_diff"] is not None
                     else f"NaN or infinite output on {v['non_finite_outputs']} images"))
        if v.get("labelled"):
            caveat = (f"  ({STANDIN_NOTE})" if report["standin"] else
                      f"  (N={v['labelled']}: too few to quote as accuracy)" if v["labelled"] < 100 else "")
            rows.append(("top-1 vs labels",
                         f"source {v['source_right']}/{v['labelled']}, TFLite {v['tflite_right']}/{v['labelled']}"
                         + caveat))
    if report.get("selective"):
        rows += selective_rows(report["selective"])
    ratio = s['tflite_bytes'] / max(1, s['source_variables_bytes'])
    rows.append(("size", f"source variables {_kb(s['source_variables_bytes'])} "
                         f"(SavedModel {_kb(s['source_saved_model_bytes'])}) "
                         f"-> model.tflite {_kb(s['tflite_bytes'])} ({ratio:.2f}x variables)"))
    rows.append(("ops", _op_counts(report["ops"])))
    if report["float_ops"] and report["quantize"] == "int8":
        rows.append(("float32 ops", ", ".join(report["float_ops"])))
    rows.append(("interpreter", report["interpreter"]))
    head = f"cassava convert: {report['description']} -> {report['out']}"
    return "\n".join([head] + [f"  {name:<16} {text}" for name, text in rows])


# ---------------------------------------------------------------------------------------------- the command


@contextlib.contextmanager
def native_output_to(log_path: Path):
    """TF's converter prints MLIR dumps and notices from C++ straight to fds 1 and 2: send them to a log file.
    Yields a text stream on the real stderr, for progress bars meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    stderr = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    with open(log_path, "ab") as log:
        try:
            for fd in (1, 2):
                os.dup2(log.fileno(), fd)
            yield stderr
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            stderr.close()


def remove_outputs(out: Path) -> None:
    """A failed conversion leaves no servable model behind, not even one from an earlier run."""
    for name in (TFLITE_FILE, SPEC_FILE):
        if (out / name).is_file():
            (out / name).unlink()
            print(f"removed the previous {out / name}", file=sys.stderr)


def run(args) -> int:
    io = check_arguments(args)
    from cassava.cloud.model import load_tf_classifier, resolve_model_path
    from cassava.shared.native import import_tensorflow as _quiet_tensorflow
    from cassava.shared.preprocess import to_model_input

    progress = not args.quiet
    source = load_tf_classifier(args.model, input_scale=args.input_scale, classes=args.classes)
    spec = source.spec
    path = resolve_model_path(args.model)
    calibration, held_out, data = plan_data(args, spec)
    calibration_x = calibration_info = None
    if calibration is not None:
        kept, pixels, skipped = pixels_of(calibration, spec.input_size, "reading calibration images", progress)
        calibration_x = to_model_input(pixels, spec.input_scale)
        calibration_info = {"data": data["calibration"], "images": len(kept), "skipped": skipped}
        if args.samples and len(kept) < args.samples:
            print(f"note: calibrating on {len(kept)} images (fewer than --samples {args.samples})", file=sys.stderr)
    verify_samples, verify_pixels, verify_skipped = pixels_of(held_out, spec.input_size,
                                                              "reading verification images", progress)
    data["verification_skipped"] = verify_skipped
    if data["split"]:
        print(f"note: {data['split']}", file=sys.stderr)
    held = Held(verify_pixels, [s.label for s in verify_samples],
                source_predictions(source, verify_pixels, progress=progress))

    tf = _quiet_tensorflow()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_FILE
    for stale in (log_path, out / REPORT_FILE):  # a report or log left from an earlier run would describe another model
        stale.unlink(missing_ok=True)
    if args.select_tf_ops:
        print("warning: --select-tf-ops: TensorFlow ops may be kept in the model; the edge then needs the Flex "
              "delegate, which ai-edge-litert and tflite-runtime do not include", file=sys.stderr)
    try:
        with native_output_to(log_path) as stderr:
            try:
                if args.target_agreement is None:
                    converter = make_converter(tf, path, spec, args, io, calibration_x, stderr)
                    content, quantize, selective = converter.convert(), args.quantize, None
                else:
                    content, quantize, selective = search_target(args, tf, path, spec, calibration_x, held, stderr)
            except CassavaError:
                raise
            except Exception as exc:  # ConverterError, RuntimeError or ValueError, with pages of detail
                raise CassavaError(f"{explain_failure(exc)} (converter log: {log_path})") from None
        report = check_and_write(args, tf, source, path, content, quantize, io, data, calibration_info, held, selective)
        if report["verified"]:  # what a device checks before serving it (shared/manifest.py)
            write_manifest(out, held.pixels, held.expected)
    except CassavaError:
        remove_outputs(out)
        raise
    if report["reason"]:
        print(f"warning: {report['reason']}", file=sys.stderr)
    verification = report["verification"]
    if verification and verification["top1_agreement"] < args.min_agreement:
        print(f"warning: top-1 agreement {_interval(verification)} is below --min-agreement {args.min_agreement:.0%}, "
              f"but {verification['images']} images cannot show that it truly is: verify on more held-out photos",
              file=sys.stderr)
    if selective and not selective["met"]:
        print(f"warning: no copy tried reaches --target-agreement {args.target_agreement:.1%}; wrote the best one "
              f"({selective['chosen']}, {_interval(report['verification'])})", file=sys.stderr)
    print(f"wrote {out / TFLITE_FILE}, {out / SPEC_FILE} and {out / REPORT_FILE}")
    return 0


class Held:
    """The held-out images: pixels, labels, and the source model's predictions on them (computed once)."""

    def __init__(self, pixels, labels, expected):
        self.pixels, self.labels, self.expected = pixels, labels, expected


def search_target(args, tf, path: Path, spec, calibration_x, held: Held, stderr):
    """--target-agreement: -> (model bytes, its quantize mode, the search's report). See edge/selective.py."""
    import argparse

    from cassava.edge import selective
    from cassava.edge.interpreter import TFLiteClassifier
    from cassava.shared.preprocess import to_model_input

    def say(line):
        if not args.quiet:
            print(line, file=stderr, flush=True)

    scratch = args.out / ".search"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    counter = iter(range(10 ** 6))

    def evaluate(content: bytes) -> dict:
        file = scratch / f"trial-{next(counter)}.tflite"
        file.write_bytes(content)
        return verify(held.expected, TFLiteClassifier(file, spec), held.pixels, held.labels, list(spec.class_names),
                      progress=False)

    def converted(mode: str) -> bytes:
        return make_converter(tf, path, spec, argparse.Namespace(**{**vars(args), "quantize": mode}), "float32",
                              calibration_x, stderr).convert()

    try:
        say(f"searching for a copy with top-1 agreement >= {args.target_agreement:.1%} on {len(held.pixels)} held-out "
            "images (TFLite QuantizationDebugger: calibrating, then layer-wise error) ...")
        search = selective.Search(tf, make_converter(tf, path, spec, args, "float32", calibration_x, stderr),
                                  calibration_x, evaluate, args.target_agreement, say)
        int8 = search.fewest_float_layers()
        plain = search.trials[0]
        plain_met = int8 is not None and not int8["float_layers"]
        dynamic = None if plain_met else search.other("dynamic", converted("dynamic"))
        float16 = None if int8 or plain_met or dynamic["meets_target"] else \
            search.other("float16", converted("float16"))
        chosen = selective.choose(int8, dynamic, float16, search.trials)
        content = search.content_of(chosen)
        float32 = converted("none")
        timing = {name: scratch / f"{name}.tflite" for name in ("chosen", "int8", "float32")}
        timing["chosen"].write_bytes(content)
        timing["int8"].write_bytes(search.content_of(plain))
        timing["float32"].write_bytes(float32)
        timed = to_model_input(held.pixels[:20], spec.input_scale)
        ms = selective.time_per_image({k: str(v) for k, v in timing.items()}, spec, timed)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {
        "target": args.target_agreement, "met": chosen["meets_target"], "chosen": chosen["name"],
        "quantize": chosen["quantize"], "kept_in_float32": chosen["float_layers"],
        "layer_ranking": search.ranking, "trials": search.trials,
        "ranking_note": (f"RMSE / scale per quantized layer from tf.lite.experimental.QuantizationDebugger on "
                         f"{min(len(calibration_x), selective.DEBUG_IMAGES)} calibration images; layers with none "
                         "(pooling, reshape) left out"),
        "cost": {"bytes": len(content), "int8_bytes": plain["bytes"], "float32_bytes": len(float32), "ms_per_image": ms,
                 "latency_note": "median per-image call at 1 thread over 20 held-out images x 3 rounds, the three "
                                 "models timed in turn, on this machine (not the edge device)"},
    }
    return content, chosen["quantize"], report


def check_and_write(args, tf, source, path: Path, content: bytes, quantize: str, io: str, data: dict, calibration_info,
                    held: Held, selective=None) -> dict:
    """Inspect and verify the converted model in a staging folder; move it into DIR only when it passes."""
    from cassava.edge.interpreter import BACKEND, Port, interpreter_class, load_tflite_classifier

    spec, out = source.spec, args.out
    input_detail, output_detail, ops, float_ops = describe_model(interpreter_class(), content, spec)
    flex_ops = sorted({op for op in ops if op.startswith("Flex")})
    float_only = [op for op in float_ops if op not in flex_ops]
    if quantize == "int8" and not args.allow_float_fallback and float_only and not selective:
        # TF 2.21's converter keeps such ops in float32 silently, even when told int8 only
        raise CassavaError(f"full-integer int8 failed: no int8 kernel for op(s) {', '.join(float_only)} "
                           "(they would run in float32); --allow-float-fallback keeps them in float32")
    variant = VARIANT_NAMES[quantize]
    if selective and quantize == "int8":
        variant += f", {len(selective['kept_in_float32'])} layer(s) kept in float32"
    tflite_spec = spec.replace(description=f"{spec.description} (TFLite {variant})", tflite={
        "quantize": quantize, "io": io,
        "input": Port(input_detail).describe(), "output": Port(output_detail).describe(),
        "float_ops": float_ops if quantize == "int8" else [], "flex_ops": flex_ops,
        "float_layers": selective["kept_in_float32"] if selective else [],
        "source": str(args.model), "converter": f"tensorflow {tf.__version__}",
    })
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        (staging / TFLITE_FILE).write_bytes(content)
        tflite_spec.save(staging)
        verification, reason = None, None
        if flex_ops:
            reason = ("not verified: no TFLite interpreter here has the Flex delegate for op(s) "
                      f"{', '.join(flex_ops)}; test the model where it will run")
        else:
            tflite = load_tflite_classifier(staging)
            verification = verify(held.expected, tflite, held.pixels, held.labels, list(spec.class_names),
                                  progress=not args.quiet)
            reason = refusal(verification, args.min_agreement, ops)
        accepted = verification is None or reason is None
        report = {
            "model": str(args.model), "source_path": str(path), "description": tflite_spec.title,
            "standin": spec.standin,
            "out": str(out / TFLITE_FILE), "quantize": quantize,
            "io": {"input": tflite_spec.tflite["input"], "output": tflite_spec.tflite["output"]},
            "calibration": calibration_info, "data": data,
            "verification": verification, "min_agreement": args.min_agreement,
            "min_agreement_rule": "refused when the 95% Wilson interval of top-1 agreement lies wholly below it",
            "accepted": accepted, "verified": verification is not None, "reason": reason,
            "sizes": {**saved_model_sizes(path), "tflite_bytes": len(content)},
            "ops": ops, "float_ops": float_ops, "flex_ops": flex_ops, "selective": selective,
            "interpreter": BACKEND, "tensorflow": tf.__version__,
        }
        if spec.standin:
            report["note"] = STANDIN_NOTE
        print(table(report))
        (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        if not accepted:
            raise CassavaError(f"refused to write {out / TFLITE_FILE}: {reason} (details in {out / REPORT_FILE})")
        for name in (TFLITE_FILE, SPEC_FILE):
            (staging / name).replace(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def refusal(verification: dict, min_agreement: float, ops) -> str:
    """Why the copy must not be used, or None. Agreement is judged by its interval: refused only when even the top
    of the 95% interval is below the minimum, so a healthy copy is not refused for the noise of a small sample."""
    if verification["non_finite_outputs"]:
        why = (f"the TFLite copy returns NaN or infinite scores on {verification['non_finite_outputs']} of "
               f"{verification['images']} images")
        if {"VAR_HANDLE", "READ_VARIABLE"} & set(ops):
            why += (" and reads variables at run time (VAR_HANDLE): a Keras 3 model saved with tf.saved_model.save? "
                    "export it with model.export(path) and convert that")
        return why
    if verification["agreement_ci95"][1] < min_agreement:
        return (f"top-1 agreement with the source is {_interval(verification)}, wholly below --min-agreement "
                f"{min_agreement:.0%}")
    return None
