"""Test helpers: free loopback ports and real MLServer processes started and stopped within bounded time."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cassava.shared.server.process import MLServerProcess, free_port, stop  # noqa: F401 (free_port: for tests)
from cassava.shared.server.process import wait_ready as process_wait_ready

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_PHOTOS = SHARED / "data" / "cassava-real"
REAL_MODEL = SHARED / "models" / "cassava-cnn-256" / "saved_model"
REAL_CLASSES = ("cbb", "cbsd", "cgm", "cmd", "healthy")
BIN = Path(sys.executable).parent


# One helper starts, waits for and stops every server process, here as in `cassava serve`, the demo and benchmarks.
MLServer = MLServerProcess


def wait_ready(url: str, timeout: float = 120.0, process: subprocess.Popen = None) -> None:
    if not process_wait_ready(url, process, timeout):
        raise TimeoutError(f"{url} not ready after {timeout:.0f} s (or its process exited)")


def stop_process_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM a process started with start_new_session=True and its children; SIGKILL after `grace` seconds."""
    stop(process, grace)


def run_cli(*args, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    """Run the installed `cassava` console script for real."""
    return subprocess.run([str(BIN / "cassava"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)


def require_shared(*paths: Path):
    import pytest

    for path in paths:
        if not path.exists():
            pytest.skip(f"{path} is absent (../shared holds the third-party test data)")
