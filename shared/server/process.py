"""Starting, waiting for and stopping a server process: one helper for `cassava serve`, the demo, the tests and the
benchmarks. A server runs in its own process group, so stopping it stops whatever it started (MLServer's workers).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

# Set by a launcher (`cassava serve`) in MLServer's environment: the file where a runtime writes why its model did
# not load, so the launcher can say it in one line without reading MLServer's log.
LOAD_FAILURE_ENV = "CASSAVA_LOAD_FAILURE_FILE"

# Never through an http_proxy from the environment: every server here is on this machine.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def answers_ok(url: str, timeout: float = 2.0) -> bool:
    """GET `url` answers 200 (a readiness probe)."""
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:  # not listening yet, or not ready yet (4xx/5xx)
        return False


def wait_ready(url: str, process: Optional[subprocess.Popen] = None, timeout: Optional[float] = None) -> bool:
    """True once `url` answers 200; False if `process` exits first or `timeout` seconds pass (None: no limit)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while process is None or process.poll() is None:
        if answers_ok(url):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.25)
    return False


def stop(process: Optional[subprocess.Popen], grace: float = 30.0, group: bool = True) -> None:
    """SIGTERM (to the process group when it has its own), SIGKILL after `grace` seconds."""
    if process is None or process.poll() is not None:
        return
    send = (lambda sig: os.killpg(process.pid, sig)) if group else process.send_signal
    try:
        send(signal.SIGTERM)
        process.wait(grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait(10)
    except ProcessLookupError:
        process.wait(10)


class ServerProcess:
    """A command that serves HTTP, in its own process group, its output in `log_path`, ready when `ready_url`
    answers 200. Use as a context manager, or start() / stop()."""

    def __init__(self, command: Sequence[str], ready_url: str, log_path, env: Optional[dict] = None,
                 name: str = "server"):
        self.command = [str(part) for part in command]
        self.ready_url = ready_url
        self.log_path = Path(log_path)
        self.env = env
        self.name = name
        self.process: Optional[subprocess.Popen] = None

    def start(self, timeout: Optional[float] = 120.0) -> "ServerProcess":
        self.launch()
        try:
            return self.wait_ready(timeout)
        except RuntimeError:
            self.stop()
            raise

    def launch(self) -> "ServerProcess":
        """Start without waiting (wait_ready() later: several servers can start at once)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        return self

    def wait_ready(self, timeout: Optional[float] = 120.0) -> "ServerProcess":
        if not wait_ready(self.ready_url, self.process, timeout):
            exited = self.process.poll() is not None
            why = f"exited with code {self.process.returncode}" if exited else f"was not ready after {timeout:.0f} s"
            raise RuntimeError(f"{self.name} {why}: {self.last_line()} (log: {self.log_path})")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def last_line(self) -> str:
        lines = [line for line in self.log().splitlines() if line.strip()]
        return lines[-1] if lines else "no output"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """Abrupt death, as when a pod or a Pi loses power."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, grace: float = 30.0) -> None:
        stop(self.process, grace)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def mlserver_command(folder) -> list:
    """`mlserver start FOLDER` with the mlserver installed beside this Python, whatever PATH says."""
    script = Path(sys.executable).parent / "mlserver"
    command = ([str(script)] if script.is_file()
               else [sys.executable, "-c", "from mlserver.cli.main import main; main()"])
    return command + ["start", str(folder)]


class LoopbackPorts:
    """A server on 127.0.0.1 with `http_port` and `grpc_port`: where clients reach it."""

    http_port: int
    grpc_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


class MLServerProcess(LoopbackPorts, ServerProcess):
    """`mlserver start` on a folder it writes (model-settings.json + settings.json): the tier's own settings.json
    (the tier whose runtime `model_settings` names, unless `tier` says), free loopback ports, and `settings` on top:
    a real server for tests and benchmarks."""

    def __init__(self, workdir, model_settings: dict, settings: Optional[dict] = None, env: Optional[dict] = None,
                 tier: Optional[str] = None):
        import json

        from ..tiers import TIERS

        implementation = str(model_settings.get("implementation", ""))
        tier = tier or next((name for name, info in TIERS.items() if implementation.startswith(info.package + ".")),
                            "cloud")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        base = {**TIERS[tier].settings(), "host": "127.0.0.1", "http_port": self.http_port,
                "grpc_port": self.grpc_port, "metrics_port": self.metrics_port}
        base.update(settings or {})
        (self.workdir / "settings.json").write_text(json.dumps(base))
        (self.workdir / "model-settings.json").write_text(json.dumps(model_settings))
        self.model_name = model_settings["name"]
        super().__init__(mlserver_command(self.workdir), f"{self.url}/v2/models/{self.model_name}/ready",
                         self.workdir / "mlserver.log", env={**os.environ, **(env or {})}, name="mlserver")

    def wait_ready(self, timeout: Optional[float] = 120.0) -> "MLServerProcess":
        try:
            return super().wait_ready(timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\nlog:\n{self.log()[-3000:]}") from None


def process_tree(pid: int) -> tuple:
    """(RSS in MB, number of processes) of a process and all its descendants, from /proc (Linux)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    total, count, todo = 0, 0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += int(Path(f"/proc/{current}/status").read_text().split("VmRSS:")[1].split()[0])
            count += 1
        except (OSError, IndexError):
            pass
        todo += children.get(current, [])
    return total / 1024, count


def tree_rss_mb(pid: int) -> float:
    """RSS in MB of a process and all its descendants, from /proc (Linux)."""
    return process_tree(pid)[0]


class PeakRss:
    """`with PeakRss(pid) as rss:` samples the process tree's RSS every 50 ms; `rss.peak` is the highest (MB)."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mb(self.pid))
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, tree_rss_mb(self.pid))
