"""Test helpers: free loopback ports and real MLServer processes started and stopped within bounded time."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_PHOTOS = SHARED / "data" / "cassava-real"
REAL_MODEL = SHARED / "models" / "cassava-cnn-256" / "saved_model"
REAL_CLASSES = ("cbb", "cbsd", "cgm", "cmd", "healthy")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, timeout: float = 120.0, process: subprocess.Popen = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


def stop_process_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM a process started with start_new_session=True and its children; SIGKILL after `grace` seconds."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


class MLServer:
    """A real `mlserver start` process on 127.0.0.1 with free ports, for one model folder.

    `model_settings` is the model-settings.json content; the folder is written under `workdir`.
    """

    def __init__(self, workdir: Path, model_settings: dict, settings: dict = None, env: dict = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        base = {"host": "127.0.0.1", "http_port": self.http_port, "grpc_port": self.grpc_port,
                "metrics_port": self.metrics_port, "parallel_workers": 0, "grpc_max_message_length": 67108864,
                "model_repository_implementation": "cassava.shared.repository.CassavaModelRepository"}
        base.update(settings or {})
        (self.workdir / "settings.json").write_text(json.dumps(base))
        (self.workdir / "model-settings.json").write_text(json.dumps(model_settings))
        self.env = {**os.environ, **(env or {})}
        self.process = None
        self.log_path = self.workdir / "mlserver.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 120.0) -> "MLServer":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([str(BIN / "mlserver"), "start", str(self.workdir)], stdout=log,
                                        stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        try:
            wait_ready(f"{self.url}/v2/models/{self.model_name}/ready", timeout, self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"mlserver did not become ready; log:\n{self.log()[-3000:]}")
        return self

    @property
    def model_name(self) -> str:
        return json.loads((self.workdir / "model-settings.json").read_text())["name"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """Abrupt death, as when a pod or a Pi loses power."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        stop_process_group(self.process)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def run_cli(*args, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    """Run the installed `cassava` console script for real."""
    return subprocess.run([str(BIN / "cassava"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)


def require_shared(*paths: Path):
    import pytest

    for path in paths:
        if not path.exists():
            pytest.skip(f"{path} is absent (../shared holds the third-party test data)")
