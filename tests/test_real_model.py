"""The real third-party model on the 27 real photos: the shared preprocessing reproduces the tutorial's result."""
import json

import numpy as np
import pytest

from cassava.shared.data import load_samples
from cassava.shared.preprocess import preprocess

from helpers import REAL_CLASSES, run_cli


@pytest.fixture(scope="module")
def real_classifier(real_model):
    from cassava.cloud.model import load_tf_classifier

    return load_tf_classifier(str(real_model), input_scale=255.0, classes=REAL_CLASSES)


def test_same_top1_as_the_tutorial_pipeline_on_27_photos(real_classifier, real_photos):
    import tensorflow as tf
    samples = load_samples([str(real_photos)])
    assert len(samples) == 27
    ours = real_classifier.predict(np.stack([preprocess(s.source, 256) for s in samples]).astype(np.float32))
    # The tutorial: tf.io.decode_jpeg + tf.image.resize, raw 0-255 floats for this model.
    tutorial = np.stack([tf.image.resize(tf.io.decode_jpeg(open(s.source, "rb").read(), channels=3), (256, 256)).numpy()
                         for s in samples])
    theirs = real_classifier.predict(tutorial)
    assert list(ours.argmax(1)) == list(theirs.argmax(1))
    right = sum(REAL_CLASSES[i] == s.label for i, s in zip(ours.argmax(1), samples))
    assert right == 20  # N=27: a check of the pipeline, not an accuracy claim


def test_predict_cli_pins_20_of_27(real_model, real_photos, tmp_path):
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    result = run_cli("predict", "--in-process", "--model", real_model, "--input-scale", "255",
                     "--classes", ",".join(REAL_CLASSES), "--data", real_photos, "-n", "0",
                     "--plot", out_png, "--json", out_json, "--quiet")
    assert result.returncode == 0, result.stderr
    records = json.loads(out_json.read_text())
    assert len(records) == 27
    assert set(records[0]) == {"file", "label", "prediction", "probability", "tier", "answered_by", "latency_ms"}
    assert records[0]["answered_by"] is None  # said only by an escalating edge
    assert sum(r["label"] == r["prediction"] for r in records) == 20
    assert "20/27 right" in result.stdout
    assert out_png.stat().st_size > 10_000


def test_spec_that_contradicts_the_model_fails_in_one_line(real_model, real_photos):
    result = run_cli("predict", "--model", real_model, "--data", real_photos, "-n", "2", "--quiet")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("cassava")]
    assert len(lines) == 1 and "5 scores" in lines[0] and "6 classes" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
