"""TensorFlow's converter, set up for one mode; its failures in one line; what the converted model holds; and the
log file its native output goes to."""
from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

import numpy as np

# Ops that only move between float and integer; any other op reading or writing float32 in an int8 model runs in float.
CAST_OPS = {"QUANTIZE", "DEQUANTIZE"}


def make_converter(tf, loaded, path: Path, spec, options, quantize: str, io: str, calibration_x, stderr=None):
    """A `tf.lite.TFLiteConverter` for `quantize` (one of MODES). `loaded`: the SavedModel, loaded once per run
    (`from_saved_model` still reads the files itself: that is TensorFlow's converter)."""
    if spec.signature in (getattr(loaded, "signatures", None) or {}):
        converter = tf.lite.TFLiteConverter.from_saved_model(str(path), signature_keys=[spec.signature])
    else:  # a TF Hub module without a serving signature: convert its call on [N, H, W, 3] floats
        size = spec.input_size
        function = tf.function(lambda x: loaded(x)).get_concrete_function(
            tf.TensorSpec([None, size, size, 3], tf.float32))
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function], loaded)
    ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        converter.representative_dataset = representative_dataset(calibration_x, not options.quiet,
                                                                   stderr or sys.stderr)
        if not options.allow_float_fallback:
            ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io != "float32":
            converter.inference_input_type = converter.inference_output_type = getattr(tf, io)
    if options.select_tf_ops:
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
