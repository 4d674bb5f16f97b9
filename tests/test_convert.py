"""`cassava convert`: every mode on the stand-in and the real model, verified against the source; broken
conversions refused; ops without int8 kernels or TFLite builtins explained, and kept with the fallback flags.

Each conversion runs the real console script once per session (`convert_once`, shared with test_edge.py).
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import (
    REAL_CLASSES,
    convert_once,
    converted,
    litert_answers,
    real_args,
    report_of,
    run_cli,
    spec_of,
    standin_args,
)

pytestmark = pytest.mark.slow

MODES = ("int8", "dynamic", "float16", "none")
def last_line(result) -> str:
    return result.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------- the stand-in


@pytest.mark.parametrize("mode", MODES)
def test_standin_every_mode_is_verified_and_self_describing(conversions, standin_model, mode):
    out = converted(conversions, f"standin-{mode}", *standin_args(mode))
    result = convert_once(conversions, f"standin-{mode}")
    report, spec = report_of(out), spec_of(out)
    assert report["accepted"] and report["verified"]
    verification = report["verification"]
    assert verification["images"] >= 150  # the stand-in's validation split, none of it used for calibration
    assert verification["top1_agreement"] >= 0.95 and verification["non_finite_outputs"] == 0
    # (the numbers themselves are recomputed against TensorFlow in test_every_mode_matches_tensorflow_...)
    assert ("stand-in model, synthetic data" in report["description"]
            and report["note"] == "stand-in model, synthetic data")
    assert "stand-in model, synthetic data" in result.stdout and "top-1 agreement" in result.stdout
    assert report["ops"] and "CONV_2D" in report["ops"]
    assert report["sizes"]["tflite_bytes"] == (out / "model.tflite").stat().st_size

    # cassava-model.json is all the edge needs: classes, size, pixel range, tensor names and I/O quantization
    assert spec["class_names"] == ["cbb", "cbsd", "cgm", "cmd", "healthy", "unknown"]
    assert spec["input_size"] == 224 and spec["input_scale"] == 1.0 and spec["standin"] is True
    tflite = spec["tflite"]
    assert tflite["quantize"] == mode and tflite["input"]["name"] and tflite["output"]["name"]
    if mode == "int8":
        assert report["calibration"]["images"] == 200 and report["calibration"]["data"] == "standin:train"
        assert tflite["input"]["dtype"] == tflite["output"]["dtype"] == "uint8"
        assert tflite["input"]["scale"] == pytest.approx(1 / 255) and tflite["input"]["zero_point"] == 0
        assert report["float_ops"] == []  # full integer: nothing computes in float
    else:
        assert report["calibration"] is None
        assert tflite["input"]["dtype"] == tflite["output"]["dtype"] == "float32"


def test_standin_sizes_follow_the_quantization(conversions, standin_model):
    size = {mode: (converted(conversions, f"standin-{mode}", *standin_args(mode)) / "model.tflite").stat().st_size
            for mode in MODES}
    assert size["int8"] <= 0.4 * size["none"]
    assert size["dynamic"] <= 0.4 * size["none"]
    assert size["float16"] <= 0.6 * size["none"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_matches_tensorflow_as_its_report_says(conversions, standin_model, mode):
    """Recomputed here, not trusting the report: TensorFlow's SavedModel against the bare LiteRT interpreter on the
    very images the report says it verified on (held out from calibration), and the report's numbers must match."""
    import tensorflow as tf

    from cassava.shared.evaluate.metrics import wilson_interval
    from cassava.shared.preprocess import preprocess

    out = converted(conversions, f"standin-{mode}", *standin_args(mode))
    report = report_of(out)
    files = report["data"]["verification_files"]
    assert len(files) == report["verification"]["images"] >= 150
    assert not set(files) & set(report["data"]["calibration_files"])
    x = np.stack([preprocess(f, 224) for f in files]).astype(np.float32) / 255.0

    signature = tf.saved_model.load(str(standin_model)).signatures["serving_default"]
    expected = np.concatenate([next(iter(signature(tf.constant(x[i:i + 32])).values())).numpy()
                               for i in range(0, len(x), 32)])
    got = litert_answers(out / "model.tflite", x)

    agree = int(np.sum(got.argmax(1) == expected.argmax(1)))
    verification = report["verification"]
    assert abs(agree - verification["agree"]) <= 1  # one image may sit on a tie between two classes
    assert np.abs(got - expected).mean() == pytest.approx(verification["mean_abs_diff"], abs=2e-4)
    assert np.abs(got - expected).max() == pytest.approx(verification["max_abs_diff"], abs=2e-3)
    assert verification["agreement_ci95"] == pytest.approx(  # wilson_interval: checked by hand in test_compare.py
        list(wilson_interval(verification["agree"], verification["images"])))
    assert agree >= 0.95 * len(files)
    bound = {"int8": 0.02, "dynamic": 0.02, "float16": 0.002, "none": 1e-4}[mode]
    assert np.abs(got - expected).mean() < bound


def test_int8_stores_the_escalation_threshold_its_held_out_images_call_for(conversions, standin_model):
    """The threshold in cassava-model.json is the one the report's curve picks for --escalation-target (default
    0.995), and applied to LiteRT's own answers on the held-out images it reaches that agreement with TensorFlow."""
    import tensorflow as tf

    from cassava.shared.bounds import lower_bound
    from cassava.shared.escalation import is_hard, point_for
    from cassava.shared.preprocess import preprocess

    out = converted(conversions, "standin-int8", *standin_args("int8"))
    report, spec = report_of(out), spec_of(out)
    escalation = report["escalation"]
    assert escalation["target"] == 0.995 and escalation["score"] == "top"
    assert spec["escalate_below"] == escalation["threshold"]
    curve = escalation["curve"]
    assert len(curve) >= 2 and [p["escalated"] for p in curve] == sorted(p["escalated"] for p in curve)
    assert curve[0]["agreement"] == escalation["edge_alone_agreement"] == report["verification"]["top1_agreement"]
    # chosen with a margin: at or above the point estimate, judged by the 95 % lower bound on kept agreement
    margin = escalation["margin"]
    assert curve[-1]["agreement"] == 1.0 and point_for(curve, 0.995)["threshold"] == margin["point_threshold"]
    assert margin["point_threshold"] <= escalation["threshold"]
    assert margin["kept"] == escalation["images"] - escalation["escalated"] and margin["confidence"] == 0.95
    assert spec["agreement_bound"] == margin["lower"] == pytest.approx(lower_bound(margin["kept_agreed"],
                                                                                   margin["kept"]))
    assert escalation["agreement"] >= 0.995 and escalation["images"] == report["verification"]["images"]
    stdout = convert_once(conversions, "standin-int8").stdout
    assert "escalate below" in stdout
    assert f"with 95% confidence, agreement on the photos the edge keeps is >= {margin['lower']:.1%} " \
           f"(N = {margin['kept']} kept" in stdout

    files = report["data"]["verification_files"]
    x = np.stack([preprocess(f, 224) for f in files]).astype(np.float32) / 255.0
    signature = tf.saved_model.load(str(standin_model)).signatures["serving_default"]
    expected = np.concatenate([next(iter(signature(tf.constant(x[i:i + 32])).values())).numpy()
                               for i in range(0, len(x), 32)]).argmax(1)
    got = litert_answers(out / "model.tflite", x)
    hard = is_hard(got, spec["escalate_below"])
    assert abs(int(hard.sum()) - escalation["escalated"]) <= 1  # one score may sit on the threshold
    settled = np.where(hard, expected, got.argmax(1))
    assert np.sum(settled == expected) >= len(files) - 1  # 0.995 of 150-200 images: every one, give or take a tie


def test_the_default_int8_copy_sends_the_fewest_images_within_its_budget(conversions, standin_model):
    """`cassava convert --quantize int8` without --plain weighs plain int8 and copies with float32 layers, and
    writes the one whose stored threshold sends the fewest held-out images within 1.5x plain int8's time and 1 MB."""
    from cassava.edge.selective import MAX_BYTES, MAX_LATENCY_RATIO

    result = convert_once(conversions, "standin-int8-default", "--model", "standin", "--quantize", "int8")
    assert result.returncode == 0, result.stderr[-3000:]
    report, spec = report_of(result.out), spec_of(result.out)
    weighed = report["escalation_search"]
    candidates = weighed["candidates"]
    assert len(candidates) >= 3 and candidates[0]["float_layer_count"] == 0  # plain int8 is weighed first
    plain_ms = candidates[0]["ms_per_image"]
    for c in candidates:
        assert c["within_budget"] == (c["bytes"] <= MAX_BYTES and c["ms_per_image"] <= MAX_LATENCY_RATIO * plain_ms)
        assert c["joint_agreement"] >= 0.995 and c["images"] == report["verification"]["images"]
    chosen = next(c for c in candidates if c["name"] == weighed["chosen"])
    assert chosen["within_budget"]
    assert chosen["escalated"] == min(c["escalated"] for c in candidates if c["within_budget"])
    # the copy written is the chosen one: its stored threshold, its float layers, its held-out answers
    assert spec["escalate_below"] == pytest.approx(chosen["threshold"])
    assert report["escalation"]["escalated"] == chosen["escalated"]
    assert len(spec["tflite"]["float_layers"]) >= chosen["float_layer_count"]
    assert (spec["tflite"]["input"]["dtype"] == "uint8") == (chosen["float_layer_count"] == 0)
    assert "default copy" in result.stdout and result.stdout.count("candidate ") == len(candidates)


# ---------------------------------------------------------------------------------------------- the real model


@pytest.mark.real
@pytest.mark.parametrize("mode", MODES)
def test_real_model_every_mode(conversions, real_model, real_photos, mode):
    out = converted(conversions, f"real-{mode}", *real_args(mode))
    report, spec = report_of(out), spec_of(out)
    verification = report["verification"]
    assert verification["images"] == 27 and report["data"]["calibration_images_excluded"] == 0
    assert verification["agree"] >= 26, f"{mode}: only {verification['agree']}/27 agree with the TF model"
    assert spec["input_size"] == 256 and spec["input_scale"] == 255.0 and spec["class_names"] == list(REAL_CLASSES)
    assert spec["standin"] is False and "stand-in" not in report["description"]
    if mode == "int8":
        assert report["calibration"]["data"] == "standin:train"
        assert spec["tflite"]["input"]["dtype"] == "uint8" and spec["tflite"]["input"]["scale"] == pytest.approx(1.0)


@pytest.mark.real
def test_real_model_int8_is_small_and_agrees_on_the_27_photos(conversions, real_model, real_photos):
    from cassava.cloud.model import load_tf_classifier
    from cassava.edge.interpreter import load_tflite_classifier
    from cassava.shared.classifier import predict_pixels
    from cassava.shared.data import load_samples
    from cassava.shared.preprocess import preprocess

    int8 = converted(conversions, "real-int8", *real_args("int8")) / "model.tflite"
    float32 = converted(conversions, "real-none", *real_args("none")) / "model.tflite"
    assert int8.stat().st_size <= 0.3 * float32.stat().st_size  # ~206 KB vs ~745 KB

    pixels = np.stack([preprocess(s.source, 256) for s in load_samples(str(real_photos))])
    expected = predict_pixels(load_tf_classifier(str(real_model), input_scale=255, classes=REAL_CLASSES), pixels)
    got = predict_pixels(load_tflite_classifier(int8.parent), pixels)
    assert int(np.sum(got.argmax(1) == expected.argmax(1))) >= 26


@pytest.mark.real
def test_the_users_only_folder_is_split_stratified_and_disjoint(conversions, real_model, real_photos):
    """One folder, no --verify-data: calibrate on half of it and verify on the other half, never refuse."""
    from cassava.shared.data import load_samples
    from cassava.shared.evaluate.metrics import wilson_interval

    args = ("--model", real_model, "--input-scale", "255", "--classes", ",".join(REAL_CLASSES), "--plain",
            "--calibration", real_photos)
    out = converted(conversions, "real-one-folder", *args)
    result = convert_once(conversions, "real-one-folder")
    report = report_of(out)
    data, verification = report["data"], report["verification"]
    calibrated, verified = set(data["calibration_files"]), set(data["verification_files"])
    assert len(calibrated) == 13 and len(verified) == 14 and not calibrated & verified  # 27 photos: half and the rest
    assert calibrated | verified == {s.name for s in load_samples(str(real_photos))}
    labels = {s.name: s.label for s in load_samples(str(real_photos))}
    for cls in REAL_CLASSES:  # each class split in proportion: the halves differ by at most one image per class
        in_calibration = sum(labels[n] == cls for n in calibrated)
        in_verification = sum(labels[n] == cls for n in verified)
        assert abs(in_calibration - in_verification) <= 1, cls
    assert report["calibration"]["images"] == 13 and verification["images"] == 14
    assert "stratified by class" in data["split"] and "stratified by class" in result.stdout
    assert verification["agreement_ci95"] == pytest.approx(list(wilson_interval(verification["agree"], 14)))
    low, high = verification["agreement_ci95"]
    assert f"(95% CI {low:.1%}-{high:.1%})" in result.stdout


def test_stratified_split_keeps_class_shares_and_is_deterministic():
    from cassava.shared.data import Sample, stratified_split

    samples = [Sample(f"{cls}-{i}", cls, None)
               for cls, n in (("cbb", 50), ("cmd", 30), ("healthy", 20)) for i in range(n)]
    first, rest = stratified_split(samples, 30)
    assert len(first) == 30 and len(rest) == 70
    assert {s.name for s in first}.isdisjoint(s.name for s in rest)
    assert [sum(s.label == c for s in first) for c in ("cbb", "cmd", "healthy")] == [15, 9, 6]
    assert [s.name for s in stratified_split(samples, 30)[0]] == [s.name for s in first]  # same split every run
    # shuffled within a class: not simply the first files (which may all come from one source)
    assert {s.name for s in first if s.label == "cbb"} != {f"cbb-{i}" for i in range(15)}
    assert [s.label for s in first[:3]] == ["cbb", "cmd", "healthy"]  # classes interleaved
    uneven, _ = stratified_split(samples[:7] + samples[50:52], 3)  # 7 cbb, 2 cmd: largest remainders
    assert sorted(s.label for s in uneven) == ["cbb", "cbb", "cmd"]


# ---------------------------------------------------------------------------------------------- refusals

MAKE_MODELS = textwrap.dedent('''
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np, keras, tensorflow as tf
    from cassava.cloud.standin import build_model

    root = sys.argv[1]
    keras.utils.set_random_seed(0)
    built = build_model()  # the stand-in's architecture; random weights are enough to compare two exports
    model = built[0] if isinstance(built, tuple) else built  # (full, head) since the stand-in trains on pooled input
    tf.saved_model.save(model, f"{root}/keras3-tf-saved-model")  # the known silent failure
    model.export(f"{root}/keras3-export", format="tf_saved_model", verbose=False)  # the right way

    rng = np.random.RandomState(0)
    for name, op in (("cumsum", lambda h: tf.math.cumsum(h, axis=-1)), ("erf", tf.math.erf)):
        class Tiny(tf.Module):
            def __init__(self):
                super().__init__()
                self.w = tf.Variable(rng.randn(3, 6).astype("float32") * 4)

            @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32, name="image")])
            def serve(self, x):
                return {"probabilities": tf.nn.softmax(op(tf.reduce_mean(x, axis=[1, 2]) @ self.w))}

        tiny = Tiny()
        tf.saved_model.save(tiny, f"{root}/{name}", signatures={"serving_default": tiny.serve})
''')


@pytest.fixture(scope="session")
def odd_models(tmp_path_factory) -> Path:
    """SavedModels that convert badly: a Keras 3 model saved with tf.saved_model.save (and the same model exported
    properly), and tiny models using cumsum (no int8 kernel) and erf (no TFLite builtin at all)."""
    root = tmp_path_factory.mktemp("odd-models")
    result = subprocess.run([sys.executable, "-c", MAKE_MODELS, str(root)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_keras3_saved_with_tf_saved_model_save_is_refused(conversions, odd_models, standin_model):
    """TF 2.21 still converts this model without complaint, into one that answers NaN: the verification catches it."""
    out = conversions / "keras3-broken"
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.tflite").write_bytes(b"an earlier conversion")  # must not survive a refused one
    result = run_cli("convert", "--model", odd_models / "keras3-tf-saved-model", "--quantize", "none",
                     "--verify-data", "standin", "--out", out, "--quiet", timeout=900)
    assert result.returncode == 2, result.stderr[-2000:]
    line = last_line(result)
    assert line.startswith("cassava convert: error: refused to write") and "NaN" in line and "model.export" in line
    assert not (out / "model.tflite").exists() and not (out / "cassava-model.json").exists()
    report = report_of(out)
    assert (report["accepted"] is False
            and report["verification"]["non_finite_outputs"] == report["verification"]["images"])
    assert "REFUSED" in result.stdout

    # the same model exported with model.export() converts faithfully: the refusal was about the save path
    good = converted(conversions, "keras3-export", "--model", odd_models / "keras3-export", "--quantize", "none",
                     "--verify-data", "standin")
    assert report_of(good)["verification"]["top1_agreement"] == 1.0


def test_int8_calibrated_on_black_images_is_refused(conversions, standin_model, tmp_path):
    """A wrong quantization (activation ranges from constant black images) collapses the agreement."""
    from PIL import Image

    black = tmp_path / "black"
    black.mkdir()
    for i in range(10):
        Image.new("RGB", (224, 224)).save(black / f"{i}.png")
    out = conversions / "black-calibration"
    result = run_cli("convert", "--model", "standin", "--plain", "--calibration", black, "--verify-data", "standin",
                     "--out", out, "--quiet", timeout=900)
    assert result.returncode == 2
    assert "wholly below --min-agreement 95%" in last_line(result)
    report = report_of(out)
    assert report["accepted"] is False and report["verification"]["top1_agreement"] < 0.5
    assert report["verification"]["agreement_ci95"][1] < 0.95  # refused on the interval, not on the point estimate
    assert not (out / "model.tflite").exists()


def test_op_without_int8_kernel_is_named_and_kept_in_float_on_request(conversions, odd_models, standin_model):
    # TF 2.21's converter does not fail here: it silently keeps CUMSUM in float32 even with TFLITE_BUILTINS_INT8
    # (the legacy quantizer raised "Quantization not yet supported for op: 'CUMSUM'"); the float op is found in
    # the converted model and reported.
    common = ("--model", odd_models / "cumsum", "--plain", "--calibration", "standin:train", "--samples", "50",
              "--verify-data", "standin")
    strict = convert_once(conversions, "cumsum-strict", *common)
    assert strict.returncode == 2
    line = last_line(strict)
    assert "no int8 kernel for op(s) CUMSUM" in line and "--allow-float-fallback" in line
    assert not (strict.out / "model.tflite").exists()

    out = converted(conversions, "cumsum-fallback", *common, "--allow-float-fallback")
    report, spec = report_of(out), spec_of(out)
    assert report["accepted"] and report["float_ops"] == ["CUMSUM"] and spec["tflite"]["float_ops"] == ["CUMSUM"]
    assert spec["tflite"]["input"]["dtype"] == "uint8"  # still an int8 model with integer I/O
    assert "CUMSUM" in report["ops"] and "DEQUANTIZE" in report["ops"]  # the float island, between (de)quantize ops


def test_tensorflow_only_op_needs_select_tf_ops(conversions, odd_models, standin_model):
    from cassava.edge.interpreter import load_tflite_classifier
    from cassava.shared.errors import CassavaError

    common = ("--model", odd_models / "erf", "--verify-data", "standin", "--quantize", "none")
    plain = convert_once(conversions, "erf-plain", *common)
    assert plain.returncode == 2
    assert "op(s) Erf are TensorFlow ops" in last_line(plain) and "--select-tf-ops" in last_line(plain)

    selected = convert_once(conversions, "erf-select", *common, "--select-tf-ops")
    assert selected.returncode == 0, selected.stderr[-2000:]
    assert "needs the Flex delegate" in selected.stderr
    report = report_of(selected.out)
    # No interpreter installed here has the Flex delegate, so the copy is written but marked unverified.
    assert report["verified"] is False and report["flex_ops"] == ["FlexErf"] and "not verified" in report["reason"]
    with pytest.raises(CassavaError, match="Flex delegate"):
        load_tflite_classifier(selected.out)

    int8 = run_cli("convert", *common[:-2], "--calibration", "standin:train", "--samples", "20", "--select-tf-ops",
                   "--out", conversions / "erf-int8", "--quiet", timeout=900)
    assert int8.returncode == 2 and "Flex delegate" in last_line(int8)


# ---------------------------------------------------------------------------------------------- user errors


@pytest.mark.parametrize("args, message", [
    (("--model", "standin", "--quantize", "dynamic", "--target-agreement", "0.99"),
     "--target-agreement applies to --quantize int8"),
    (("--model", "standin", "--target-agreement", "0.99", "--io", "uint8"), "--target-agreement writes float32 I/O"),
    (("--model", "standin", "--target-agreement", "99"), "--target-agreement is a fraction"),
    (("--model", "standin", "--escalation-target", "99.5"), "--escalation-target is a fraction"),
    (("--model", "standin", "--quantize", "dynamic", "--io", "uint8"), "--io uint8 needs --quantize int8"),
    (("--model", "standin", "--quantize", "none", "--allow-float-fallback"),
     "--allow-float-fallback applies to --quantize int8"),
    (("--model", "standin", "--min-agreement", "95"), "--min-agreement is a fraction"),
    (("--model", "/nonexistent/saved_model"), "no such file or directory"),
])
def test_user_errors_are_one_line(tmp_path, args, message):
    result = run_cli("convert", *args, "--out", tmp_path / "out", timeout=300)
    assert result.returncode == 2
    assert message in last_line(result) and "Traceback" not in result.stderr


@pytest.mark.real
def test_int8_of_a_real_model_needs_calibration_images(tmp_path, real_model):
    result = run_cli("convert", "--model", real_model, "--input-scale", "255", "--classes", ",".join(REAL_CLASSES),
                     "--out", tmp_path / "out", timeout=300)
    assert result.returncode == 2 and "needs --calibration DATA" in last_line(result)
    assert not (tmp_path / "out" / "model.tflite").exists()
