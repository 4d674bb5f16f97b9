"""Quiet by default: a user's first `cassava demo` (empty cache, so it draws the photos and trains the stand-in),
the convert/compare/serve logs it writes, and `cassava predict` with TF Hub unreachable print no native
TensorFlow/absl/LiteRT lines and no Keras per-epoch lines; `--debug` shows TensorFlow's own lines again.
"""
from __future__ import annotations

import json
import os
import re

import pytest

from helpers import free_port, run_cli

pytestmark = pytest.mark.slow

# TensorFlow/absl C++ log lines (`E0000 00:00:... node_def_util.cc:...`, `I0000 ... cudart_stub.cc`), absl's
# pre-init warning, oneDNN/CUDA notices, LiteRT's XNNPACK notice, and Keras's per-epoch dumps (`Epoch 1/40`,
# `19/19 - 3s - 142ms/step`).
NOISE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d|absl::InitializeLog|oneDNN|cuda|node_def_util|XNNPACK delegate"
                   r"|^Epoch \d+/\d+|^\d+/\d+ - \d+m?s", re.IGNORECASE | re.MULTILINE)


def _noise(text: str) -> list:
    return [line for line in text.splitlines() if NOISE.search(line)]


def _unreachable_hub(tmp_path) -> dict:
    """TF Hub unreachable whatever the network: https goes through a proxy on a closed loopback port."""
    closed = f"http://127.0.0.1:{free_port()}"
    return {"CASSAVA_CACHE": str(tmp_path / "cache"), "TFHUB_CACHE_DIR": str(tmp_path / "cache" / "tfhub"),
            "https_proxy": closed, "HTTPS_PROXY": closed, "no_proxy": "", "NO_PROXY": ""}


def test_first_demo_is_quiet(tmp_path):
    import cassava.edge.runtime  # noqa: F401 (the [dev] extra installs it: a broken import fails here)
    cache = tmp_path / "cache"
    result = run_cli("demo", "--out", tmp_path / "demo", "-n", 4, "--port-offset", 21000 + os.getpid() % 1000,
                     env={"CASSAVA_CACHE": str(cache)}, timeout=1500)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Building the offline stand-in model" in result.stdout, "the cache was not empty: nothing was trained"
    assert "training the stand-in" in result.stderr  # the one progress bar instead of Keras's epoch lines
    assert not _noise(output), "\n".join(_noise(output))
    logs = {path.name: path.read_text(errors="replace") for path in (tmp_path / "demo" / "logs").glob("*.log")}
    assert {"convert.log", "cloud-server.log", "edge-server.log", "field-edge-server.log"} <= set(logs)
    field = json.loads((tmp_path / "demo" / "summary.json").read_text())["field"]  # the field step ran, quietly
    assert field["answered_by_edge"] + field["cloud_in_request"] + field["provisional_then_cloud"] \
        + field["still_provisional"] + field["not_answered"] == field["images"] == 4, field
    assert field["provisional_then_cloud"] >= 1, field
    for name, text in logs.items():  # what `cassava convert`, `compare` and `serve` print on their own
        assert not _noise(text), f"{name}:\n" + "\n".join(_noise(text))


def test_predict_with_tf_hub_unreachable_is_one_line(tmp_path):
    photo = tmp_path / "leaf.png"
    from PIL import Image

    Image.new("RGB", (224, 224), (60, 140, 50)).save(photo)
    result = run_cli("predict", "--in-process", "--data", photo, env=_unreachable_hub(tmp_path), timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("cassava predict: error: cannot download https://tfhub.dev/"), lines
    assert "--model standin" in lines[0] and not _noise(result.stdout + result.stderr)


def test_debug_shows_tensorflow_native_lines(tmp_path):
    photo = tmp_path / "leaf.png"
    from PIL import Image

    Image.new("RGB", (224, 224), (60, 140, 50)).save(photo)
    result = run_cli("predict", "--debug", "--in-process", "--data", photo, env=_unreachable_hub(tmp_path), timeout=300)
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert _noise(result.stderr), "--debug should show TensorFlow's own start-up lines"
