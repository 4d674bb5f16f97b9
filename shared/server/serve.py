"""`cassava serve cloud|edge`: run the tier's MLServer runtime, checked first, and say where it listens.

The run dir is a copy of the tier's folder as shipped (`model-settings.json` + `settings.json`, the same files
`mlserver start cloud/` reads) with the model, host, ports and workers filled in; then `mlserver start RUNDIR`
runs under this command. MLServer exits 0 when the model fails to load, so readiness is watched here: a model
that never becomes ready ends this command with one line and exit code 2.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ..errors import CassavaError
from ..native import native_stderr_silenced
from ..labels import parse_class_list
from ..spec import CROPNET_HANDLE, is_model_path, model_kind
from ..tiers import TIERS
from .process import LOAD_FAILURE_ENV, mlserver_command, stop, wait_ready

MODEL_NAME = "cassava"
STANDIN_VERSION_NAME = "standin-v1"


def add_arguments(parser):
    parser.add_argument("tier", choices=tuple(TIERS), help="cloud: full TF model; edge: TFLite model (no TensorFlow)")
    parser.add_argument("--model", help=f"cloud: TF Hub handle (default: {CROPNET_HANDLE}), SavedModel dir or 'standin' "
                                        "(offline stand-in, synthetic data); edge: model.tflite or a `cassava convert` dir (required)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--http-port", type=int, help="REST port (cloud 8080, edge 9080)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port (cloud 8081, edge 9081)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus metrics port (cloud 8082, edge 9082)")
    parser.add_argument("--workers", type=int, help="MLServer parallel_workers: model copies in worker processes (default from settings.json: 0 = in the server process)")
    parser.add_argument("--input-scale", type=float, choices=(1.0, 255.0), help="model pixel range: 1 = [0,1], 255 = raw 0-255")
    parser.add_argument("--classes", type=parse_class_list, help="class names in model output order, e.g. cbb,cbsd,cgm,cmd,healthy")
    parser.add_argument("--run-dir", type=Path, help="where the MLServer settings are written (default: a temporary dir)")


def run(args) -> int:
    tier = args.tier
    model = args.model or (CROPNET_HANDLE if tier == "cloud" else None)
    if not model:
        raise CassavaError("serve edge needs --model: a model.tflite or a folder made by `cassava convert`")
    if args.workers is not None and args.workers < 0:
        raise CassavaError(f"--workers must be 0 or more, not {args.workers}")
    defaults = TIERS[tier].ports
    ports = [p if p is not None else d for p, d in zip((args.http_port, args.grpc_port, args.metrics_port), defaults)]
    check_ports(args.host, ports)
    debug = bool(getattr(args, "debug", False))
    spec = check_model(tier, model, args.input_scale, args.classes, debug)
    if args.run_dir:
        return serve(write_run_dir(args.run_dir, tier, model, args.host, ports, args.workers, args.input_scale, args.classes),
                     tier, spec, debug)
    with tempfile.TemporaryDirectory(prefix=f"cassava-{tier}-") as run_dir:
        return serve(write_run_dir(run_dir, tier, model, args.host, ports, args.workers, args.input_scale, args.classes),
                     tier, spec, debug)


# ---------------------------------------------------------------- checks before MLServer starts


def check_ports(host: str, ports) -> None:
    if len(set(ports)) != len(ports):
        raise CassavaError(f"the HTTP, gRPC and metrics ports must differ (got {', '.join(map(str, ports))})")
    for port, flag in zip(ports, ("--http-port", "--grpc-port", "--metrics-port")):
        if not 0 < port < 65536:
            raise CassavaError(f"{flag} {port}: not a TCP port")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and gRPC bind
            try:
                sock.bind((host, port))
            except socket.gaierror:
                raise CassavaError(f"--host {host}: not an address of this machine") from None
            except OSError as exc:
                raise CassavaError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another {flag}") from None


def check_model(tier: str, model: str, input_scale=None, classes=None, debug: bool = False):
    """Load the model once before MLServer starts, so a missing or broken model is one line and exit 2.

    The edge check runs here (the TFLite interpreter is light). The cloud check runs in a throwaway process:
    otherwise this command would keep TensorFlow's ~700 MB for as long as the server runs.
    Returns the model's ModelSpec.
    """
    from ..spec import ModelSpec

    if tier == "edge":
        try:
            from cassava.edge.interpreter import load_tflite_classifier
        except ImportError as exc:
            raise CassavaError(f"the edge tier is not installed ({exc}); pip install 'cassava-cloud-edge[edge]'") from None
        with native_stderr_silenced(not debug):  # LiteRT's "INFO: Created ... XNNPACK delegate" and the like
            return load_tflite_classifier(model, input_scale=input_scale, classes=classes).spec
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return ModelSpec.from_json(pool.submit(_cloud_spec, model, input_scale, classes, not debug).result())
        except BrokenProcessPool:
            raise CassavaError(f"model {model}: the process loading it died (out of memory?)"
                               + ("" if debug else "; --debug shows its output")) from None


def _cloud_spec(model, input_scale, classes, quiet: bool) -> dict:
    if quiet:  # TensorFlow's C++ start-up lines ignore TF_CPP_MIN_LOG_LEVEL; errors come back as the exception
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # for good: this process is thrown away after the check
    from cassava.cloud.model import load_tf_classifier

    try:
        return load_tf_classifier(model, input_scale=input_scale, classes=classes).spec.to_json()
    except CassavaError:
        raise
    except Exception as exc:  # only a CassavaError is certain to cross the process boundary intact
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise CassavaError(f"model {model}: cannot load ({type(exc).__name__}: {first})") from None


# ---------------------------------------------------------------- the run dir


def write_run_dir(run_dir, tier: str, model: str, host: str, ports, workers=None, input_scale=None, classes=None) -> Path:
    """Copy the tier's settings into `run_dir` with this run's model, address and overrides. Returns the run dir."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    model_settings, settings = TIERS[tier].model_settings(), TIERS[tier].settings()

    parameters = model_settings.setdefault("parameters", {})
    # a relative path would be read relative to the run dir by MLServer; TF Hub handles and `standin` stay as they are
    parameters["uri"] = str(Path(model).resolve()) if is_model_path(model) else model
    if model_kind(model) == "standin":
        parameters["version"] = STANDIN_VERSION_NAME
    elif model.rstrip("/") != CROPNET_HANDLE and tier == "cloud":
        parameters.pop("version", None)  # the shipped version names CropNet; another model is unversioned
    extra = parameters.setdefault("extra", {})
    if input_scale is not None:
        extra["input_scale"] = float(input_scale)
    if classes:
        extra["classes"] = ",".join(classes)

    http_port, grpc_port, metrics_port = ports
    settings.update(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                    metrics_dir=str(run_dir / ".metrics"))  # worker processes share metrics through files here
    if workers is not None:
        settings["parallel_workers"] = int(workers)
    (run_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2) + "\n")
    (run_dir / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    others = [p for p in run_dir.rglob("model-settings.json") if p.parent != run_dir]
    if others:  # MLServer loads every model-settings.json under the folder it starts on
        raise CassavaError(f"--run-dir {run_dir} holds other models' settings ({others[0]}); MLServer would load them "
                           "too: use an empty folder")
    return run_dir


# ---------------------------------------------------------------- running MLServer


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
            raise CassavaError(f"model failed to load in MLServer: {reason}" + ("" if debug else " (--debug shows its log)"))
        log.start_echo()
        print(f"cassava ({tier}) on http://{shown}:{settings['http_port']}/v2/models/{name}/infer, "
              f"gRPC {shown}:{settings['grpc_port']}, metrics http://{shown}:{settings['metrics_port']}/metrics", flush=True)
        if spec is not None:
            print(f"model: {spec.title}; {spec.input_size}x{spec.input_size} input, classes {','.join(spec.class_names)}; "
                  f"settings in {run_dir}", flush=True)
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
