"""The process `cassava serve` becomes once its checks pass: `mlserver start RUN_DIR` under a small supervisor.

`cassava serve` imports the whole CLI and loads the model once to check it; it then replaces itself (exec) with
`python -m cassava.shared.server.supervise`, which imports only the standard library and this package's light
modules, so the process left beside MLServer for the server's lifetime is ~20 MB instead of ~55 MB. It keeps the
command's contract: the "cassava (tier) on ..." line once the model is ready, one line and exit code 2 when MLServer
never gets the model ready (MLServer itself exits 0 then), SIGTERM stops MLServer, and MLServer dies with it.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from ..errors import CassavaError, run_command
from ..spec import MODEL_NAME
from .process import LOAD_FAILURE_ENV, mlserver_command, stop, wait_ready


def _local(host: str) -> str:
    """An address this machine can reach the server on (a wildcard host listens on loopback too)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def serve(run_dir, tier: str, spec=None, debug: bool = False) -> int:
    """`mlserver start RUN_DIR` until it stops. Raises CassavaError if the model never becomes ready."""
    run_dir = Path(run_dir)
    settings = json.loads((run_dir / "settings.json").read_text())
    model_settings = json.loads((run_dir / "model-settings.json").read_text())
    host, name = settings.get("host", "127.0.0.1"), model_settings.get("name", MODEL_NAME)
    shown = f"[{host}]" if ":" in host else host
    ready_url = f"http://{_local(host)}:{settings['http_port']}/v2/models/{name}/ready"

    failure_file = run_dir / "load-failure.txt"
    failure_file.unlink(missing_ok=True)
    environment = {**os.environ, LOAD_FAILURE_ENV: str(failure_file)}  # where the runtime says why a load failed
    process = subprocess.Popen(mlserver_command(run_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=environment,
                               preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    log = _LogRelay(process, echo=debug)
    in_main_thread = threading.current_thread() is threading.main_thread()  # only there can signals be handled
    if in_main_thread:
        previous = signal.signal(signal.SIGTERM, lambda *_: process.terminate())  # stopping this command stops MLServer
    try:
        if not wait_ready(ready_url, process):  # no time limit: a TF Hub model may be slow
            process.wait()
            log.join()
            reason = (failure_file.read_text().strip() if failure_file.is_file() else
                      f"MLServer exited with code {process.returncode} before the model was ready")
            hint = "" if debug else " (--debug shows its log)"
            raise CassavaError(f"model failed to load in MLServer: {reason}{hint}")
        log.start_echo()
        print(f"cassava ({tier}) on http://{shown}:{settings['http_port']}/v2/models/{name}/infer, "
              f"gRPC {shown}:{settings['grpc_port']}, metrics http://{shown}:{settings['metrics_port']}/metrics",
              flush=True)
        if spec is not None:
            print(spec.line if isinstance(spec, _Said) else model_line(spec, run_dir), flush=True)
        code = process.wait()
        log.join()
        if code not in (0, -signal.SIGTERM, -signal.SIGINT):
            print(f"cassava serve: MLServer exited with code {code}", file=sys.stderr)
            return code if code > 0 else 1
        return 0
    except KeyboardInterrupt:  # Ctrl-C reaches MLServer too (same process group): let it shut down cleanly
        stop(process, group=False)
        raise
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        stop(process, group=False)


def _die_with_parent():
    """In MLServer's process before it starts: SIGTERM when this command dies, even by SIGKILL, so no server is left
    holding the ports. (This process has no other threads when it starts MLServer, so preexec_fn is safe.)"""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _LogRelay:
    """Reads MLServer's output: kept back while it starts (a failed load becomes one line), echoed to stderr after."""

    def __init__(self, process: subprocess.Popen, echo: bool):
        self._process = process
        self._echo = echo
        self._thread = threading.Thread(target=self._relay, daemon=True)
        self._thread.start()

    def _relay(self):
        # Keep reading whatever happens to our stderr: a full pipe would stall MLServer at its next log line.
        for raw in iter(self._process.stdout.readline, b""):
            line = raw.decode(errors="replace")
            if not self._echo:
                continue  # kept back while MLServer starts: a failed load is reported in one line instead
            try:
                sys.stderr.write(line)
                sys.stderr.flush()
            except (OSError, ValueError):
                pass

    def start_echo(self):
        self._echo = True

    def join(self):
        self._thread.join(10)


def model_line(spec, run_dir) -> str:
    return (f"model: {spec.title}; {spec.input_size}x{spec.input_size} input, classes {','.join(spec.class_names)}; "
            f"settings in {run_dir}")


class _Said:
    """What `model_line` needs of a ModelSpec, passed over exec as text."""

    def __init__(self, line: str):
        self.line = line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cassava serve")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("tier")
    parser.add_argument("--model-line", default=None)
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--remove-run-dir", action="store_true", help="a temporary run dir: removed at the end")
    args = parser.parse_args(argv)
    said = _Said(args.model_line) if args.model_line else None
    try:
        return run_command("cassava serve", lambda: serve(args.run_dir, args.tier, said, args.debug), args.debug)
    finally:
        if args.remove_run_dir:
            shutil.rmtree(args.run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
