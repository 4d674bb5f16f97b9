"""`cassava bundle edge`'s refusals, run in this process: each is exit code 2 with one line saying what is wrong,
before anything is downloaded, and no bundle is left behind. The happy path (docker, qemu, PyPI) is in
test_images.py."""
from __future__ import annotations

import json
import shutil

import pytest

from cassava.cli import main
from cassava.edge.bundle import _python_version, _requirements


def bundle(capsys, *argv):
    """-> (exit code, stderr lines) of `cassava bundle edge ARGV`."""
    code = main(["bundle", "edge", *map(str, argv)])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def good_model(standin_tflite, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(standin_tflite, model)
    return model


@pytest.mark.parametrize("platform, words", [
    ("linux/arm/v7", "--platform linux/arm/v7: PyPI has no armv7 wheels of numpy or ai-edge-litert"),
    ("windows/amd64", "--platform windows/amd64: not one of linux/arm64, linux/amd64"),
    ("arm64", "--platform arm64: not one of linux/arm64, linux/amd64"),
])
def test_unsupported_and_unknown_platforms(capsys, good_model, tmp_path, platform, words):
    out = tmp_path / "b.tar.gz"
    code, lines = bundle(capsys, "--platform", platform, "--model", good_model, "--out", out)
    assert code == 2 and lines == [f"cassava bundle: error: {words}" + lines[0].split(words, 1)[1]]
    assert not out.exists()


@pytest.mark.parametrize("name", ["bundle.zip", "bundle.tar", "bundle.tgz", "bundle"])
def test_an_output_name_without_tar_gz(capsys, good_model, tmp_path, name):
    code, lines = bundle(capsys, "--model", good_model, "--out", tmp_path / name)
    assert code == 2 and lines == [f"cassava bundle: error: --out {tmp_path / name}: the bundle is a .tar.gz"]


@pytest.mark.parametrize("version", ["3", "three.eleven", "3.11.2", ""])
def test_a_bad_python_version(capsys, good_model, tmp_path, version):
    code, lines = bundle(capsys, "--model", good_model, "--out", tmp_path / "b.tar.gz", "--python-version", version)
    assert code == 2 and lines == [f"cassava bundle: error: --python-version {version}: expected MAJOR.MINOR, "
                                   "e.g. 3.11"]


def test_python_versions_parse_to_numbers():
    assert _python_version("3.11") == (3, 11) and _python_version("3.9") == (3, 9)


def test_a_model_that_does_not_load_is_refused_before_any_download(capsys, good_model, tmp_path):
    (good_model / "model.tflite").write_bytes((good_model / "model.tflite").read_bytes()[:3000])  # cut short
    out = tmp_path / "b.tar.gz"
    code, lines = bundle(capsys, "--model", good_model, "--out", out)
    assert code == 2 and len(lines) == 1
    # refused by the device's own verification (shared/manifest.py), before the interpreter is even tried
    recorded = json.loads((good_model / "cassava-manifest.json").read_text())["files"]["model.tflite"]["bytes"]
    assert lines[0] == (f"cassava bundle: error: --model {good_model}: refused (truncated: "
                        f"{good_model / 'model.tflite'} has 3000 of its {recorded} bytes)")
    assert not out.exists()


def test_a_folder_that_is_not_a_conversion_is_refused(capsys, good_model, tmp_path):
    (good_model / "cassava-model.json").unlink()
    code, lines = bundle(capsys, "--model", good_model, "--out", tmp_path / "b.tar.gz")
    assert code == 2 and lines == [f"cassava bundle: error: --model {good_model}: expected a `cassava convert` folder "
                                   "with model.tflite and cassava-model.json"]


def test_pip_failing_is_one_line_and_leaves_no_bundle(capsys, good_model, tmp_path, monkeypatch):
    from cassava.shared.server.process import free_port

    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{free_port()}/simple")  # an index that is not there
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    out = tmp_path / "b.tar.gz"
    code, lines = bundle(capsys, "--model", good_model, "--out", out)
    assert code == 2 and len(lines) == 1, lines
    # The first pip step that needs the index fails: the project's wheel (when its build needs setuptools from the
    # index) or, with the build requirements at hand, the device's wheels. Either way pip's own ERROR line is kept.
    assert lines[0].startswith(("cassava bundle: error: cannot get the cassava-cloud-edge wheel: ERROR: ",
                                "cassava bundle: error: cannot download the wheels for linux/arm64 (PyPI reachable?): "
                                "ERROR: No matching distribution found for "))
    assert not out.exists()


def test_the_requirements_are_the_edge_extra_for_the_device_not_this_machine():
    arm64 = _requirements("aarch64")
    names = {r.split("[")[0].split(">")[0].split("<")[0].split("=")[0].split(";")[0].strip() for r in arm64}
    assert {"numpy", "pillow", "mlserver", "ai-edge-litert"} <= names
    assert not {"tensorflow", "matplotlib", "opencv-python-headless"} & names  # cloud, client, camera: not installed
    assert all(";" not in r for r in arm64)  # markers evaluated here, for the device
    assert "ai-edge-litert" not in {r.split(">")[0] for r in _requirements("armv7l")}

