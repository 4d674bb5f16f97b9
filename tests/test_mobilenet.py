"""CropNet's architecture through `cassava convert`: a MobileNetV3-Small (hard-swish, squeeze-excite) trained briefly
on the stand-in's synthetic leaves (tests/models/mobilenet.py, cached in CASSAVA_CACHE), converted to int8 and with
--target-agreement, each copy checked against TensorFlow here, not only in the converter's report."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cassava.shared.evaluate.metrics import wilson_interval  # checked by hand in test_compare.py

from helpers import convert_once, converted, report_of, spec_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def mobilenet():
    from models.mobilenet import ensure_mobilenet  # needs the stand-in's synthetic photos, not its model

    return ensure_mobilenet()


@pytest.fixture(scope="session")
def conversions(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "mobilenet-conversions"


UNSEEN_SEED = 3  # the stand-in's splits are drawn with seeds 1 (train) and 2 (validation): these leaves are new


def agreement_here(model_dir, tflite_dir, per_class: int = 15) -> tuple:
    """(images, top-1 agreements) of TF and the LiteRT interpreter on freshly drawn synthetic leaves that nothing
    calibrated, verified or searched on (the converter's own checks used the validation split)."""
    from cassava.cloud.model import load_tf_classifier
    from cassava.edge.interpreter import load_tflite_classifier
    from cassava.shared.classifier import predict_pixels
    from cassava.shared.labels import CROPNET_CLASSES
    from cassava.shared.preprocess import preprocess
    from cassava.shared.synthetic import draw_class

    pixels = np.stack([preprocess(image, 224) for index, name in enumerate(CROPNET_CLASSES)
                       for image in draw_class(per_class, UNSEEN_SEED, index, name)])
    n = len(pixels)
    expected = predict_pixels(load_tf_classifier(str(model_dir)), pixels)
    got = predict_pixels(load_tflite_classifier(tflite_dir), pixels)
    assert np.all(np.isfinite(got)) and got.shape == expected.shape == (n, 6)
    return n, int(np.sum(got.argmax(1) == expected.argmax(1)))


def test_model_is_a_mobilenetv3_with_cropnets_interface(mobilenet):
    spec = json.loads((mobilenet / "cassava-model.json").read_text())
    assert spec["input_size"] == 224 and spec["input_scale"] == 1.0 and len(spec["class_names"]) == 6
    assert spec["standin"] is True and "MobileNetV3" in spec["description"]
    assert (mobilenet / "saved_model.pb").is_file()  # exported with model.export(), like the stand-in


def test_int8_keeps_hard_swish_and_squeeze_excite_in_integer_and_agrees(conversions, mobilenet):
    out = converted(conversions, "mobilenet-int8", "--model", mobilenet, "--quantize", "int8", "--plain")
    report, spec = report_of(out), spec_of(out)
    ops = report["ops"]
    assert ops.count("HARD_SWISH") >= 10 and ops.count("MEAN") >= 5 and "MUL" in ops  # h-swish; SE: pool, scale
    assert "DEPTHWISE_CONV_2D" in ops and report["float_ops"] == []  # all of it full-integer
    assert spec["tflite"]["input"]["dtype"] == "uint8"
    verification = report["verification"]
    assert verification["images"] == 180 and report["calibration"]["data"] == "standin:train"
    assert verification["non_finite_outputs"] == 0 and verification["top1_agreement"] >= 0.95
    assert verification["top1_agreement"] == verification["agree"] / 180
    assert verification["agreement_ci95"] == pytest.approx(list(wilson_interval(verification["agree"], 180)))
    assert "stand-in model, synthetic data" in report["description"]
    n, same = agreement_here(mobilenet, out)
    assert same >= 0.95 * n


def test_target_agreement_meets_the_target_or_says_it_missed(conversions, mobilenet):
    """A target of 100 % forces the layer search unless plain int8 already agrees on every image."""
    out = converted(conversions, "mobilenet-target", "--model", mobilenet, "--target-agreement", "1.0")
    result = convert_once(conversions, "mobilenet-target")
    report, spec = report_of(out), spec_of(out)
    selective, verification = report["selective"], report["verification"]
    assert selective["target"] == 1.0 and selective["trials"] and selective["layer_ranking"]
    ranking = [r["rmse_over_scale"] for r in selective["layer_ranking"]]
    assert ranking == sorted(ranking, reverse=True) and ranking[-1] > 0  # worst first, error-free layers left out
    assert selective["met"] == (verification["agree"] == verification["images"])
    if not selective["met"]:
        assert "no copy tried reaches --target-agreement 100.0%" in result.stderr
    chosen = next(t for t in selective["trials"] if t["name"] == selective["chosen"])
    assert chosen["agree"] == verification["agree"]  # the search measured what the final check measured
    assert spec["tflite"]["quantize"] == selective["quantize"] == report["quantize"]
    if selective["quantize"] == "int8":
        assert spec["tflite"]["float_layers"] == selective["kept_in_float32"]
        assert bool(selective["kept_in_float32"]) == bool(report["float_ops"])
    cost = selective["cost"]
    assert cost["bytes"] == (out / "model.tflite").stat().st_size
    assert cost["int8_bytes"] < cost["float32_bytes"] and set(cost["ms_per_image"]) == {"chosen", "int8", "float32"}
    assert "kept in float32" in result.stdout or selective["quantize"] != "int8"
    n, same = agreement_here(mobilenet, out)
    assert same >= 0.95 * n
