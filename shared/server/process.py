"""Starting, waiting for and stopping a server process: for `cassava serve` and the demo (the tests' and
benchmarks' launcher, cassava.testing.LoopbackServer, is built on it). A server runs in its own process group, so
stopping it stops whatever it started (MLServer's workers).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
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
