"""Start-up faults on both tiers: one clear line, a non-zero exit, no wall of traceback (that is what --debug is for);
and the security defaults a server starts with.
"""
from __future__ import annotations

import json
import shutil

import pytest

from helpers import converted, free_port, run_cli, standin_args

pytestmark = pytest.mark.slow


def _ports():
    return ["--http-port", free_port(), "--grpc-port", free_port(), "--metrics-port", free_port()]


def _one_line(result, words: str):
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and words in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory, standin_model):
    return converted(tmp_path_factory.getbasetemp() / "conversions", "standin-int8", *standin_args("int8"))


def test_edge_missing_model(tmp_path):
    _one_line(run_cli("serve", "edge", "--model", tmp_path / "nowhere", *_ports(), timeout=120), "nowhere")


def test_edge_corrupt_model_file(tmp_path, int8_dir):
    broken = tmp_path / "broken"
    shutil.copytree(int8_dir, broken)
    (broken / "model.tflite").write_bytes((int8_dir / "model.tflite").read_bytes()[:2000])  # cut short in the copy
    _one_line(run_cli("serve", "edge", "--model", broken, *_ports(), timeout=120),
              f"cassava serve: error: model {broken / 'model.tflite'}: not a valid TFLite model (")


def test_edge_wrong_tensor_name(tmp_path, int8_dir):
    renamed = tmp_path / "renamed"
    shutil.copytree(int8_dir, renamed)
    spec = json.loads((renamed / "cassava-model.json").read_text())
    spec["tflite"]["input"]["name"] = "serving_default_photo:0"
    (renamed / "cassava-model.json").write_text(json.dumps(spec))
    _one_line(run_cli("serve", "edge", "--model", renamed, *_ports(), timeout=120),
              "no input tensor named 'serving_default_photo:0'")


def test_cloud_tf_hub_unreachable_is_one_line(tmp_path):
    """No network here: the default CropNet handle cannot be fetched, and the error says what to do instead."""
    env = {"CASSAVA_CACHE": str(tmp_path / "empty-cache"), "TFHUB_CACHE_DIR": str(tmp_path / "empty-cache" / "tfhub")}
    result = run_cli("serve", "cloud", *_ports(), env=env, timeout=300)
    _one_line(result, "cannot download https://tfhub.dev/google/cropnet/classifier/cassava_disease_V1/2")
    assert "--model standin" in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("predict", "--debug", "--model", tmp_path / "nowhere", "--data", "standin", timeout=120)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_servers_bind_loopback_unless_told(tmp_path):
    from cassava.shared.server.serve import write_run_dir

    for tier in ("cloud", "edge"):
        run_dir = write_run_dir(tmp_path / tier, tier, "standin", "127.0.0.1", (1, 2, 3))
        settings = json.loads((run_dir / "settings.json").read_text())
        assert settings["host"] == "127.0.0.1"
    from cassava.cli import build_parser

    assert build_parser().parse_args(["serve", "cloud"]).host == "127.0.0.1"
    assert build_parser().parse_args(["serve", "edge", "--model", "x"]).host == "127.0.0.1"
