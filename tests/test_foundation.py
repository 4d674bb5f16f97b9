"""Foundation: packaging, model spec, data sources, the stand-in, and the CLI's error contract."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cassava.shared.data import load_samples
from cassava.shared.errors import CassavaError
from cassava.shared.spec import ModelSpec, read_spec_file

from helpers import run_cli

PY = sys.executable


def _blocked_tensorflow(tmp_path: Path) -> dict:
    """Environment in which `import tensorflow` (and keras) fails, as on an edge device or a thin client."""
    for name in ("tensorflow", "keras", "tf_keras"):
        package = tmp_path / "blocked" / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"raise ImportError('{name} is deliberately unavailable here')\n")
    return {**os.environ, "PYTHONPATH": str(tmp_path / "blocked")}


def test_shared_and_client_import_without_tensorflow(tmp_path):
    code = (
        "import sys\n"
        "import cassava.shared.client.predict, cassava.shared.protocol.v2, cassava.shared.data, "
        "cassava.shared.client.plotting\n"
        "import cassava.shared.preprocess, cassava.shared.spec, cassava.shared.labels, cassava.cli\n"
        "cassava.cli.build_parser()\n"
        "try:\n    import tensorflow\nexcept ImportError:\n    pass\nelse:\n    sys.exit('tensorflow was importable')\n"
        "assert 'tensorflow' not in sys.modules or sys.modules['tensorflow'] is None\n"
        "print('ok')\n"
    )
    result = subprocess.run([PY, "-c", code], env=_blocked_tensorflow(tmp_path), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_only_the_cassava_namespace_is_installed():
    code = "import importlib.util as u; print([n for n in ('shared', 'cloud', 'edge', 'cli') if u.find_spec(n)])"
    result = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd="/", timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("predict", "serve", "convert", "compare", "demo"):
        assert command in result.stdout, f"{command} missing from help"
    result = run_cli("predict", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: cassava predict")
    for flag in ("--in-process", "--local", "--remote", "--edge", "--auto", "--cloud", "--data", "--wire", "--grpc",
                 "--retries", "--json", "--csv", "--plot"):  # every mode and output the README documents
        assert f" {flag}" in result.stdout, f"{flag} missing from predict --help"


def test_spec_file_roundtrip_and_validation(tmp_path):
    spec = ModelSpec(input_size=256, input_scale=255, class_names=("a", "b"), description="x")
    spec.save(tmp_path)
    assert read_spec_file(tmp_path) == spec
    (tmp_path / "cassava-model.json").write_text(json.dumps({"input_size": 224, "colour": "green"}))
    with pytest.raises(CassavaError, match="unknown field"):
        read_spec_file(tmp_path)
    with pytest.raises(CassavaError, match="input_scale"):
        ModelSpec(input_scale=2)


def test_standin_says_what_it_is(standin_model):
    spec = read_spec_file(standin_model)
    assert spec.standin and "stand-in model, synthetic data" in spec.title
    assert spec.input_size == 224 and spec.input_scale == 1.0 and len(spec.class_names) == 6
    assert (standin_model / "saved_model.pb").is_file()


def test_standin_learns_the_synthetic_classes(standin_model, standin_data):
    from cassava.cloud.model import load_tf_classifier
    from cassava.shared.classifier import predict_pixels
    from cassava.shared.preprocess import preprocess

    classifier = load_tf_classifier("standin")
    samples = load_samples([str(standin_data)], 60)
    probs = predict_pixels(classifier, np.stack([preprocess(s.source, 224) for s in samples]))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    right = sum(classifier.spec.class_names[i] == s.label for i, s in zip(probs.argmax(1), samples))
    assert right / len(samples) >= 0.8  # stand-in model, synthetic data: a sanity bound, not cassava accuracy


def _class_folder(root: Path, classes=("cbb", "healthy"), per_class=3, bad=None) -> Path:
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((40, 50, 3), 30 * i, np.uint8)).save(root / cls / f"{cls}-{i}.png")
    if bad:
        (root / classes[0] / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_class_folders_are_interleaved_and_labelled(tmp_path):
    samples = load_samples([str(_class_folder(tmp_path / "d"))], 4)
    assert [s.label for s in samples] == ["cbb", "healthy", "cbb", "healthy"]


def test_unknown_class_folder_is_an_error(tmp_path):
    root = _class_folder(tmp_path / "d", classes=("cbb", "rust"))
    with pytest.raises(CassavaError, match="rust"):
        load_samples([str(root)])


def test_tfds_source_with_mock_data():
    import tensorflow_datasets as tfds  # the [data] extra, part of [dev]
    with tfds.testing.mock_data(num_examples=5):
        samples = load_samples(["tfds:cassava/validation"], 3)
    assert len(samples) == 3
    assert all(s.label in ("cbb", "cbsd", "cgm", "cmd", "healthy") for s in samples)
    assert all(s.source.ndim == 3 and s.source.shape[-1] == 3 for s in samples)
    assert samples[0].name.startswith("tfds:cassava/validation/")


@pytest.mark.parametrize("args, expected", [
    (["--model", "/no/such/model", "--data", "standin"], "no such file"),
    (["--model", "standin", "--data", "/no/such/folder"], "no such file, folder"),
    (["--model", "standin", "--data", "nothing-matches-*.jpg"], "no such file"),
    (["--model", "http://tfhub.dev/google/x/1", "--data", "standin"], "insecure"),
])
def test_cli_errors_are_one_line_exit_2(args, expected):
    result = run_cli("predict", *args, "--quiet")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not line.startswith(("WARNING", "I0000", "E0000", "W0000"))]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_single_image_and_unknown_folder(tmp_path):
    bad = tmp_path / "leaf.jpg"
    bad.write_bytes(b"not a jpeg")
    result = run_cli("predict", "--model", "standin", "--data", bad, "--quiet")
    assert result.returncode == 1 and "skipped" in result.stderr and "not an image" in result.stderr
    root = _class_folder(tmp_path / "d", classes=("cbb", "blight"))
    result = run_cli("predict", "--model", "standin", "--data", root, "--quiet")
    assert result.returncode == 2 and "blight" in result.stderr


def test_bad_image_inside_a_folder_is_reported_not_dropped(tmp_path, standin_model):
    root = _class_folder(tmp_path / "d", bad=True)
    out = tmp_path / "out.json"
    result = run_cli("predict", "--model", "standin", "--data", root, "-n", "0", "--json", out, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr and "broken.jpg" in result.stderr
    records = json.loads(out.read_text())
    assert len(records) == 7  # 6 good + 1 bad: none dropped
    broken = [r for r in records if r["file"].endswith("broken.jpg")]
    assert len(broken) == 1 and broken[0]["prediction"] is None and broken[0]["error"]
    assert "1 failed" in result.stdout


def test_single_image_prints_top3(standin_data):
    leaf = sorted((standin_data / "cmd").glob("*.jpg"))[0]
    result = run_cli("predict", "--model", "standin", "--data", leaf, "--quiet")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert leaf.name in lines[0] and "ms" in lines[0]
    assert [line.strip()[:2] for line in lines[1:4]] == ["1.", "2.", "3."]
    assert "Mosaic Disease" in result.stdout
