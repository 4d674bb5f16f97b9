"""What the benchmarks share: the stand-in's and the real model's TFLite copies, and real MLServer processes for
either tier.

Process handling is the project's one helper (`cassava.shared.server.process`: free loopback ports, bounded start and
stop), and a server's settings are the tier's shipped ones (`cassava.shared.server.serve.write_run_dir`), so a
benchmark measures what `cassava serve` would run.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from cassava.shared.server.process import free_port
from cassava.testing import LoopbackServer

REPO = Path(__file__).resolve().parents[1]
# The third-party test model and photos beside the repo (../shared); benchmarks that use them skip without them.
REAL_MODEL = REPO.parent / "shared" / "models" / "cassava-cnn-256" / "saved_model"
REAL_PHOTOS = REPO.parent / "shared" / "data" / "cassava-real"
REAL_CLASSES = "cbb,cbsd,cgm,cmd,healthy"

__all__ = ["LoopbackServer",
           "free_port", "real_tflite", "standin_tflite", "tier_server", "REPO", "REAL_MODEL", "REAL_PHOTOS",
           "REAL_CLASSES"]


def _convert(*args) -> None:
    """`cassava convert ARGS` in its own process (TensorFlow's memory and threads stay out of the benchmark's)."""
    result = subprocess.run([sys.executable, "-m", "cassava", "convert", *map(str, args)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"cassava convert failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")


def standin_tflite(quantize: str = "int8") -> Path:
    """The stand-in converted to TFLite (`cassava convert`), built once and cached in CASSAVA_CACHE/bench/."""
    from cassava.shared.cache import STANDIN_VERSION, built_once, cache_dir
    from cassava.shared.spec import CONVERTED_LAYOUT

    # a new stand-in, or a new layout of converted folders, gets a new copy
    target = cache_dir() / "bench" / f"{STANDIN_VERSION}-{quantize}-{CONVERTED_LAYOUT}"
    return built_once(target, f"bench-standin-{quantize}",
                      lambda folder: _convert("--model", "standin", "--out", folder, "--quantize", quantize),
                      f"converting the stand-in to {quantize} TFLite in {target} ...", lambda folder: f"{folder} ready")


def real_tflite(quantize: str) -> Path:
    """The real model converted (calibrated on the stand-in's synthetic photos), cached in CASSAVA_CACHE/bench/."""
    from cassava.shared.cache import built_once, cache_dir
    from cassava.shared.spec import CONVERTED_LAYOUT

    target = cache_dir() / "bench" / f"real-{quantize}-{CONVERTED_LAYOUT}"
    return built_once(target, f"bench-real-{quantize}",
                      lambda folder: _convert("--model", REAL_MODEL, "--input-scale", "255", "--classes", REAL_CLASSES,
                                              "--quantize", quantize, "--calibration", "standin:train",
                                              "--verify-data", REAL_PHOTOS, "--out", folder, "--quiet"),
                      f"converting the real model to {quantize} TFLite in {target} ...",
                      lambda folder: f"{folder} ready")


def tier_server(tier: str, model: str, workdir: Optional[Path] = None, extra: Optional[dict] = None,
                settings: Optional[dict] = None) -> LoopbackServer:
    """An MLServer (not started) for `tier` with the shipped settings, `model`, and `extra` model parameters."""
    from cassava.shared.server.serve import write_run_dir

    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"bench-{tier}-"))
    shipped = write_run_dir(workdir / "shipped", tier, str(model), "127.0.0.1", (1, 2, 3))
    model_settings = json.loads((shipped / "model-settings.json").read_text())
    base = json.loads((shipped / "settings.json").read_text())
    model_settings.setdefault("parameters", {}).setdefault("extra", {}).update(extra or {})
    base.update({"metrics_dir": str(workdir / ".metrics")}, **(settings or {}))
    for key in ("http_port", "grpc_port", "metrics_port", "host"):
        base.pop(key, None)  # LoopbackServer.mlserver() picks free loopback ports
    return LoopbackServer.mlserver(workdir / "server", model_settings, base)
