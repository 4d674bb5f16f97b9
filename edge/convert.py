"""`cassava convert`: the cloud model -> a verified TFLite copy for the edge (int8, dynamic, float16 or float32).

Conversion is TensorFlow's own `tf.lite.TFLiteConverter`. What this adds: the calibration images go through the
shared preprocessing, the result is checked against the source model on images it was not calibrated on, and
a copy that disagrees with its source is refused, not written. Output, in DIR: model.tflite, cassava-model.json
(everything the edge needs to serve it) and conversion-report.json.
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
from cassava.shared.spec import SPEC_FILE, STANDIN_NOTE

MODES = ("int8", "dynamic", "float16", "none")
IO_TYPES = ("uint8", "int8", "float32")
REPORT_FILE = "conversion-report.json"
LOG_FILE = "converter.log"  # what TensorFlow's converter printed
VARIANT_NAMES = {"int8": "int8", "dynamic": "dynamic-range int8 weights", "float16": "float16 weights", "none": "float32"}
# Ops that only move between float and integer; any other op reading or writing float32 in an int8 model runs in float.
CAST_OPS = {"QUANTIZE", "DEQUANTIZE"}


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="TF Hub handle, SavedModel dir, or 'standin' (stand-in model, synthetic data)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for model.tflite, cassava-model.json and the report")
    parser.add_argument("--quantize", choices=MODES, default="int8",
                        help="int8: full-integer (needs calibration images); dynamic: int8 weights; float16: half-size weights; "
                             "none: float32 (default int8)")
    parser.add_argument("--calibration", nargs="+", metavar="DATA",
                        help="images calibrating int8 (folder, files, glob, standin:train); default for the stand-in: standin:train")
    parser.add_argument("--samples", type=int, default=200, help="calibration images to use (default 200)")
    parser.add_argument("--verify-data", nargs="+", metavar="DATA",
                        help="held-out images to compare source and TFLite on (default: the stand-in's validation split, "
                             "else the calibration images not used for calibration)")
    parser.add_argument("--verify-samples", type=int, default=500, help="verify on at most this many images (0 = all; default 500)")
    parser.add_argument("--io", choices=IO_TYPES, help="int8 model input/output type (default uint8; other modes are float32)")
    parser.add_argument("--min-agreement", type=float, default=0.95,
                        help="refuse the copy when its top-1 agrees with the source on fewer images than this (default 0.95)")
    parser.add_argument("--input-scale", type=float, choices=(1.0, 255.0), help="model pixel range: 1 = [0,1], 255 = raw 0-255")
    parser.add_argument("--classes", type=parse_class_list, help="class names in model output order, e.g. cbb,cbsd,cgm,cmd,healthy")
    parser.add_argument("--allow-float-fallback", action="store_true",
                        help="int8: keep ops that have no int8 kernel in float32 instead of failing")
    parser.add_argument("--select-tf-ops", action="store_true",
                        help="allow TensorFlow ops TFLite lacks (the edge then needs the Flex delegate, which "
                             "ai-edge-litert and tflite-runtime do not include)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def check_arguments(args) -> str:
    """-> the I/O type; every contradiction is one line before TensorFlow loads."""
    if args.samples < 1:
        raise CassavaError("--samples must be at least 1")
    if args.verify_samples < 0:
        raise CassavaError("--verify-samples must be 0 (all) or more")
    if not 0.0 <= args.min_agreement <= 1.0:
        raise CassavaError("--min-agreement is a fraction between 0 and 1, e.g. 0.95")
    if args.quantize != "int8":
        if args.io not in (None, "float32"):
            raise CassavaError(f"--io {args.io} needs --quantize int8 (only full-integer models have integer input and output)")
        if args.allow_float_fallback:
            raise CassavaError("--allow-float-fallback applies to --quantize int8 only")
        return "float32"
    return args.io or "uint8"


# ---------------------------------------------------------------------------------------------- data


def plan_data(args, spec):
    """-> (calibration samples or None, verification samples, sentence on where each came from)."""
    from cassava.shared.data import describe, load_samples

    calibration_data = args.calibration or (["standin:train"] if spec.standin else None)
    calibration = None
    if args.quantize == "int8":
        if not calibration_data:
            raise CassavaError("--quantize int8 needs --calibration DATA: about 200 photos like the ones the model will "
                               "classify (a class folder, files or a glob); the rest of them verify the result")
        pool = load_samples(calibration_data)
        calibration = pool[:args.samples]
        remainder = pool[args.samples:]
    else:
        remainder = load_samples(calibration_data) if calibration_data else []

    if args.verify_data:
        verify, source = load_samples(args.verify_data), describe(args.verify_data)
    elif spec.standin:
        verify, source = load_samples("standin"), "standin (the stand-in's validation split)"
    elif remainder:
        verify, source = remainder, f"{describe(calibration_data)} (images not used for calibration)"
    else:
        what = f"all {len(calibration)} --calibration images calibrated int8" if calibration else "nothing to verify on"
        raise CassavaError(f"{what}: pass --verify-data DATA (held-out photos) to compare the TFLite copy with the source")

    used = {s.name for s in calibration or []}
    held_out = [s for s in verify if s.name not in used]  # never verify on an image that calibrated the model
    if not held_out:
        raise CassavaError(f"--verify-data {source}: every image was also used for calibration; pass other photos")
    overlap = len(verify) - len(held_out)
    if args.verify_samples:
        held_out = held_out[:args.verify_samples]
    return calibration, held_out, {"calibration": describe(calibration_data) if calibration else None,
                                   "verification": source, "calibration_images_excluded": overlap}


def pixels_of(samples, size: int, what: str, progress: bool):
    """Preprocess samples (the shared path); an unreadable image is reported on stderr and counted, never dropped silently."""
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
        function = tf.function(lambda x: loaded(x)).get_concrete_function(tf.TensorSpec([None, size, size, 3], tf.float32))
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
    flex = re.findall(r"TF Select ops: ([\w, ]+)", text) or re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text)
    if flex:
        names = sorted({n.strip() for group in flex for n in group.split(",") if n.strip()})
        return (f"op(s) {', '.join(names)} are TensorFlow ops with no TFLite builtin; --select-tf-ops keeps them "
                "(the edge then needs the Flex delegate)")
    if "Flex delegate" in text or "Select TensorFlow op" in text:
        return ("int8 calibration runs the model in a TFLite interpreter, and none here has the Flex delegate its TF ops "
                "need; with --select-tf-ops use --quantize dynamic, float16 or none")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"TFLite conversion failed ({type(exc).__name__}: {first[:300]})"


def describe_model(interpreter_cls, content: bytes, spec):
    """-> (input detail, output detail, op names, float32 ops) read from the converted model, before it is written."""
    interpreter = interpreter_cls(model_content=content)
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) > 1 or len(outputs) > 1:  # name them through the signature, as the source spec does
        runner = interpreter.get_signature_runner(spec.signature)
        inputs = [runner.get_input_details()[spec.input_key]] if spec.input_key else list(runner.get_input_details().values())
        outputs = [runner.get_output_details()[spec.output_key]] if spec.output_key else list(runner.get_output_details().values())
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in interpreter.get_tensor_details()}
    ops, float_ops = [], []
    for op in interpreter._get_ops_details():
        ops.append(op["op_name"])
        tensors = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        if op["op_name"] not in CAST_OPS and any(dtypes.get(i) == np.float32 for i in tensors):
            float_ops.append(op["op_name"])
    return inputs[0], outputs[0], ops, sorted(set(float_ops))


# ---------------------------------------------------------------------------------------------- verification


def verify(source, tflite, pixels, labels, batch_size: int = 32, progress: bool = True) -> dict:
    from tqdm import tqdm

    from cassava.shared.preprocess import to_model_input

    expected, got = [], []
    for start in tqdm(range(0, len(pixels), batch_size), desc="verifying", unit="batch", file=sys.stderr,
                      disable=not progress, leave=False):
        x = to_model_input(pixels[start:start + batch_size], source.spec.input_scale)
        expected.append(source.predict(x))
        got.append(tflite.predict(x))
    expected, got = np.concatenate(expected), np.concatenate(got)
    finite = np.all(np.isfinite(got), axis=1)
    agree = int(np.sum((expected.argmax(1) == got.argmax(1)) & finite))
    diff = np.abs(got - expected)
    result = {"images": len(pixels), "agree": agree, "top1_agreement": agree / len(pixels),
              "non_finite_outputs": int(np.sum(~finite)),
              "max_abs_diff": float(diff.max()) if finite.all() else None,
              "mean_abs_diff": float(diff.mean()) if finite.all() else None}
    names = source.spec.class_names
    known = [i for i, label in enumerate(labels) if label in names]
    if known:
        truth = np.array([names.index(labels[i]) for i in known])
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


def table(report: dict) -> str:
    v, s, io = report["verification"], report["sizes"], report["io"]
    rows = [
        ("quantize", f"{report['quantize']}, I/O {io['input']['dtype']} -> {io['output']['dtype']}"
                     + (f" (input scale {io['input']['scale']:.6g}, zero point {io['input']['zero_point']})" if io['input']['scale'] else "")),
        ("calibration", f"{report['calibration']['images']} images from {report['calibration']['data']}"
                        if report["calibration"] else "none (not int8)"),
        ("verified on", f"{v['images']} held-out images from {report['data']['verification']}" if v else "not verified"),
    ]
    if v:
        verdict = "OK" if report["accepted"] else "REFUSED"
        rows.append(("top-1 agreement", f"{v['agree']}/{v['images']} = {v['top1_agreement']:.1%} "
                                        f"(minimum {report['min_agreement']:.1%})  {verdict}"))
        rows.append(("|Δ probability|", f"max {v['max_abs_diff']:.4f}, mean {v['mean_abs_diff']:.4f}" if v["max_abs_diff"] is not None
                     else f"NaN or infinite output on {v['non_finite_outputs']} images"))
        if v.get("labelled"):
            rows.append(("top-1 vs labels", f"source {v['source_right']}/{v['labelled']}, TFLite {v['tflite_right']}/{v['labelled']}"
                                            + (f"  ({STANDIN_NOTE})" if report["standin"] else
                                               f"  (N={v['labelled']}: too few to quote as accuracy)" if v["labelled"] < 100 else "")))
    rows.append(("size", f"source variables {_kb(s['source_variables_bytes'])} (SavedModel {_kb(s['source_saved_model_bytes'])}) "
                         f"-> model.tflite {_kb(s['tflite_bytes'])} ({s['tflite_bytes'] / max(1, s['source_variables_bytes']):.2f}x variables)"))
    rows.append(("ops", _op_counts(report["ops"])))
    if report["float_ops"] and report["quantize"] == "int8":
        rows.append(("kept in float32", ", ".join(report["float_ops"])))
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
    for name in ("model.tflite", SPEC_FILE):
        if (out / name).is_file():
            (out / name).unlink()
            print(f"removed the previous {out / name}", file=sys.stderr)


def run(args) -> int:
    io = check_arguments(args)
    from cassava.cloud.model import _quiet_tensorflow, load_tf_classifier, resolve_model_path
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
        if len(kept) < args.samples:
            print(f"note: calibrating on {len(kept)} images (fewer than --samples {args.samples})", file=sys.stderr)
    verify_samples, verify_pixels, verify_skipped = pixels_of(held_out, spec.input_size, "reading verification images", progress)
    data["verification_skipped"] = verify_skipped

    tf = _quiet_tensorflow()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / LOG_FILE
    for stale in (log_path, out / REPORT_FILE):  # a report or log left from an earlier run would describe another model
        stale.unlink(missing_ok=True)
    if args.select_tf_ops:
        print("warning: --select-tf-ops: TensorFlow ops may be kept in the model; the edge then needs the Flex delegate, "
              "which ai-edge-litert and tflite-runtime do not include", file=sys.stderr)
    try:
        with native_output_to(log_path) as stderr:
            converter = make_converter(tf, path, spec, args, io, calibration_x, stderr)
            try:
                content = converter.convert()
            except Exception as exc:  # ConverterError, RuntimeError or ValueError, with pages of detail
                raise CassavaError(f"{explain_failure(exc)} (converter log: {log_path})") from None
        report = check_and_write(args, tf, source, path, content, io, data, calibration_info, verify_samples, verify_pixels)
    except CassavaError:
        remove_outputs(out)
        raise
    if report["reason"]:
        print(f"warning: {report['reason']}", file=sys.stderr)
    print(f"wrote {out / 'model.tflite'}, {out / SPEC_FILE} and {out / REPORT_FILE}")
    return 0


def check_and_write(args, tf, source, path: Path, content: bytes, io: str, data: dict, calibration_info,
                    verify_samples, verify_pixels) -> dict:
    """Inspect and verify the converted model in a staging folder; move it into DIR only when it passes."""
    from cassava.edge.interpreter import BACKEND, Port, interpreter_class, load_tflite_classifier

    spec, out = source.spec, args.out
    input_detail, output_detail, ops, float_ops = describe_model(interpreter_class(), content, spec)
    flex_ops = sorted({op for op in ops if op.startswith("Flex")})
    float_only = [op for op in float_ops if op not in flex_ops]
    if args.quantize == "int8" and not args.allow_float_fallback and float_only:
        # TF 2.21's converter keeps such ops in float32 silently, even when told int8 only
        raise CassavaError(f"full-integer int8 failed: no int8 kernel for op(s) {', '.join(float_only)} (they would run "
                           "in float32); --allow-float-fallback keeps them in float32")
    tflite_spec = spec.replace(description=f"{spec.description} (TFLite {VARIANT_NAMES[args.quantize]})", tflite={
        "quantize": args.quantize, "io": io, "input": Port(input_detail).describe(), "output": Port(output_detail).describe(),
        "float_ops": float_ops if args.quantize == "int8" else [], "flex_ops": flex_ops,
        "source": str(args.model), "converter": f"tensorflow {tf.__version__}",
    })
    staging = out / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        (staging / "model.tflite").write_bytes(content)
        tflite_spec.save(staging)
        verification, reason = None, None
        if flex_ops:
            reason = (f"not verified: no TFLite interpreter here has the Flex delegate for op(s) {', '.join(flex_ops)}; "
                      "test the model where it will run")
        else:
            tflite = load_tflite_classifier(staging)
            verification = verify(source, tflite, verify_pixels, [s.label for s in verify_samples], progress=not args.quiet)
            reason = refusal(verification, args.min_agreement, ops)
        accepted = verification is None or reason is None
        report = {
            "model": str(args.model), "source_path": str(path), "description": tflite_spec.title, "standin": spec.standin,
            "out": str(out / "model.tflite"), "quantize": args.quantize,
            "io": {"input": tflite_spec.tflite["input"], "output": tflite_spec.tflite["output"]},
            "calibration": calibration_info, "data": data,
            "verification": verification, "min_agreement": args.min_agreement,
            "accepted": accepted, "verified": verification is not None, "reason": reason,
            "sizes": {**saved_model_sizes(path), "tflite_bytes": len(content)},
            "ops": ops, "float_ops": float_ops, "flex_ops": flex_ops,
            "interpreter": BACKEND, "tensorflow": tf.__version__,
        }
        if spec.standin:
            report["note"] = STANDIN_NOTE
        print(table(report))
        (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        if not accepted:
            raise CassavaError(f"refused to write {out / 'model.tflite'}: {reason} (details in {out / REPORT_FILE})")
        for name in ("model.tflite", SPEC_FILE):
            (staging / name).replace(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def refusal(verification: dict, min_agreement: float, ops) -> str:
    """Why the copy must not be used, or None."""
    if verification["non_finite_outputs"]:
        why = (f"the TFLite copy returns NaN or infinite scores on {verification['non_finite_outputs']} of "
               f"{verification['images']} images")
        if {"VAR_HANDLE", "READ_VARIABLE"} & set(ops):
            why += (" and reads variables at run time (VAR_HANDLE): a Keras 3 model saved with tf.saved_model.save? "
                    "export it with model.export(path) and convert that")
        return why
    if verification["top1_agreement"] < min_agreement:
        return (f"top-1 agreement with the source is {verification['top1_agreement']:.1%} "
                f"({verification['agree']}/{verification['images']}), below --min-agreement {min_agreement:.0%}")
    return None
