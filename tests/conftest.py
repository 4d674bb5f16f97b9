"""Session-wide fixtures: the stand-in model is built once per run (and cached across runs in CASSAVA_CACHE), each
conversion runs once per session, and servers several modules use are defined here (no test module imports
another; plain helpers live in helpers.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import (
    REAL_CLASSES,
    REAL_MODEL,
    REAL_PHOTOS,
    LoopbackServer,
    all_running,
    converted,
    require_shared,
    shipped_cloud,
    standin_args,
)

BLOCK = 'raise ImportError("{name} is blocked in this test: the edge tier must run without it")\n'


@pytest.fixture(scope="session")
def standin_model() -> Path:
    from cassava.cloud.standin import ensure_standin

    return ensure_standin()


@pytest.fixture(scope="session")
def standin_data(standin_model) -> Path:
    from cassava.shared.cache import standin_data_dir

    return standin_data_dir("validation")


@pytest.fixture(scope="session")
def real_photos() -> Path:
    require_shared(REAL_PHOTOS)
    return REAL_PHOTOS


@pytest.fixture(scope="session")
def real_model() -> Path:
    require_shared(REAL_MODEL)
    return REAL_MODEL


@pytest.fixture(scope="session")
def conversions(tmp_path_factory) -> Path:
    """Where `helpers.converted` puts each session's `cassava convert` outputs (one folder per name)."""
    return tmp_path_factory.getbasetemp() / "conversions"


@pytest.fixture(scope="session")
def standin_int8(conversions, standin_model) -> Path:
    return converted(conversions, "standin-int8", *standin_args("int8"))


@pytest.fixture(scope="session")
def no_tensorflow(tmp_path_factory) -> dict:
    """Environment in which `import tensorflow` (and keras) fails, as on a Raspberry Pi with only the edge extra."""
    root = tmp_path_factory.mktemp("no-tensorflow")
    for name in ("tensorflow", "keras", "tf_keras"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(BLOCK.format(name=name))
    env = {"PYTHONPATH": str(root)}
    check = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True, text=True,
                           env={**os.environ, **env}, timeout=60)
    assert check.returncode != 0 and "blocked in this test" in check.stderr
    return env


@pytest.fixture(scope="module")
def real_cloud(tmp_path_factory, real_model):
    """The third-party model on the shipped cloud settings: 256 px, raw 0-255 pixels, 5 classes, told through
    parameters.extra."""
    model_settings, settings = shipped_cloud(str(real_model), input_scale=255, classes=",".join(REAL_CLASSES))
    server = LoopbackServer.mlserver(tmp_path_factory.mktemp("cloud-real"), model_settings, settings).start(timeout=300)
    yield server
    server.stop()


# ---------------------------------------------------------------------------------------------- skips, for CI

_SKIPPED: list = []


def pytest_collection_modifyitems(config, items):
    """Tests marked `fuzz_full` (an hour of fuzzing) run only when the marker expression names them: otherwise they
    are deselected, not skipped, so CI's skip check (.ci/check_skips.py) still sees every skip as a fault."""
    if "fuzz_full" in (config.option.markexpr or ""):
        return
    kept = [item for item in items if item.get_closest_marker("fuzz_full") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append({"test": report.nodeid, "reason": reason})


def pytest_sessionfinish(session, exitstatus):
    """With CASSAVA_SKIPS_FILE set (.ci/run sets it), every skipped test and why, as JSON, for .ci/check_skips.py."""
    path = os.environ.get("CASSAVA_SKIPS_FILE")
    if path:
        Path(path).write_text(json.dumps(_SKIPPED, indent=1) + "\n")


@pytest.fixture(scope="session")
def standin_servers(tmp_path_factory, standin_model, standin_int8, no_tensorflow):
    """Both tiers at once: the cloud on the stand-in, the edge on its int8 copy (`cassava convert --model standin
    --quantize int8`) with TensorFlow unimportable."""
    workdir = tmp_path_factory.mktemp("oip")
    yield from all_running({"cloud": LoopbackServer.serve(workdir, "cloud", "standin"),
                            "edge": LoopbackServer.serve(workdir, "edge", standin_int8, env=no_tensorflow)},
                           timeout=300)


@pytest.fixture(scope="session")
def photo_files():
    """The 27 real photos' files (the servers decode them), or two synthetic ones where ../shared is absent."""
    if REAL_PHOTOS.exists():
        from cassava.shared.data import load_samples

        return [Path(s.source).read_bytes() for s in load_samples(str(REAL_PHOTOS))]
    import io

    from PIL import Image

    files = []
    for color in ((40, 120, 30), (200, 180, 60)):
        buffer = io.BytesIO()
        Image.new("RGB", (300, 200), color).save(buffer, format="JPEG")
        files.append(buffer.getvalue())
    return files
