"""For the suite and the benchmarks only: the one launcher of real servers on free loopback ports, and memory readings
of a server's process tree. Nothing the product runs imports this module (`cassava serve` and the demo use
shared/server/process.py's `ServerProcess` directly)."""
from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import httpx

from cassava.shared.server.process import ServerProcess, free_port, mlserver_command
from cassava.shared.spec import MODEL_NAME
from cassava.shared.tiers import TIERS

BIN = Path(sys.executable).parent


class LoopbackServer(ServerProcess):
    """A real server on three free loopback ports (HTTP, gRPC, metrics), in its own process group; start() it again
    after a stop to come back on the same ports. Made by one of:

      serve(workdir, tier, model, *flags)        `cassava serve TIER --model MODEL FLAGS`
      mlserver(workdir, model_settings, ...)     `mlserver start` on a folder holding these settings
      shipped(workdir, tier, model_dir)          `mlserver start` on the tier's shipped settings, the model in ./model
    """

    def __init__(self, command_for, workdir, log_name: str, model_name: str = MODEL_NAME, env: Optional[dict] = None,
                 name: str = "server"):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        self.model_name = model_name
        super().__init__(command_for(self), f"{self.url}/v2/models/{model_name}/ready", self.workdir / log_name,
                         env={**os.environ, **(env or {})}, name=name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text

    def signal_group(self, sig) -> None:
        os.killpg(self.process.pid, sig)

    def wait_ready(self, timeout: Optional[float] = 120.0) -> "LoopbackServer":
        try:
            return super().wait_ready(timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\nlog:\n{self.log()[-3000:]}") from None

    @classmethod
    def serve(cls, workdir, tier: str, model, *flags, env: Optional[dict] = None) -> "LoopbackServer":
        def command(server):
            return [BIN / "cassava", "serve", tier, "--model", model, *flags, "--http-port", server.http_port,
                    "--grpc-port", server.grpc_port, "--metrics-port", server.metrics_port]

        server = cls(command, workdir, f"{tier}.log", env=env, name=f"cassava serve {tier}")
        server.tier = tier
        return server

    @classmethod
    def mlserver(cls, workdir, model_settings: dict, settings: Optional[dict] = None, env: Optional[dict] = None,
                 tier: Optional[str] = None) -> "LoopbackServer":
        """The tier's own settings.json (the tier whose runtime `model_settings` names, unless `tier` says), these
        ports, and `settings` on top."""
        implementation = str(model_settings.get("implementation", ""))
        tier = tier or next((name for name, info in TIERS.items() if implementation.startswith(info.package + ".")),
                            "cloud")

        def command(server):
            base = {**TIERS[tier].settings(), "host": "127.0.0.1", "http_port": server.http_port,
                    "grpc_port": server.grpc_port, "metrics_port": server.metrics_port, **(settings or {})}
            (server.workdir / "settings.json").write_text(json.dumps(base))
            (server.workdir / "model-settings.json").write_text(json.dumps(model_settings))
            return mlserver_command(server.workdir)

        server = cls(command, workdir, "mlserver.log", model_settings["name"], env=env, name="mlserver")
        server.tier = tier
        return server

    @classmethod
    def shipped(cls, workdir, tier: str, model_dir, env: Optional[dict] = None) -> "LoopbackServer":
        """`mlserver start` on a copy of the shipped TIER/ settings, the model copied to ./model as they expect."""
        workdir = Path(workdir)
        shutil.copytree(model_dir, workdir / "model")
        model_settings = TIERS[tier].model_settings()
        assert model_settings["parameters"]["uri"] == "./model"
        return cls.mlserver(workdir, model_settings, env=env, tier=tier)


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
