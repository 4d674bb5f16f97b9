"""`cassava serve cloud|edge`: run the tier's MLServer runtime, checked first, and say where it listens.

The run dir is a copy of the tier's folder as shipped (`model-settings.json` + `settings.json`, the same files
`mlserver start cloud/` reads) with the model, host, ports and workers filled in. After the checks this command
replaces itself with the small supervisor of `mlserver start RUNDIR` (supervise.py), so the CLI's imports and the
checked model do not stay in memory beside the server. MLServer exits 0 when the model fails to load, so readiness
is watched there: a model that never becomes ready ends the command with one line and exit code 2.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from ..arguments import add_escalation_arguments, add_model_spec_arguments
from ..budget import DEFAULT_MAX_DECODING_PIXELS, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_REQUEST_PIXELS, PixelLimits
from ..cache import STANDIN_VERSION, cache_dir
from ..errors import CassavaError
from ..native import native_stderr_silenced
from ..spec import CROPNET_HANDLE, is_model_path, model_kind
from ..tiers import TIERS, tool
from .guard import MODEL_CONTROL_ENV, ModelControl
from .page import PAGE_ENV
from .store import MAX_INTERVAL_S, WATCH_INTERVAL_S, StoreWatcher, is_store
from .supervise import model_line, serve  # noqa: F401 (serve: the supervisor, also used by tests)


def add_arguments(parser):
    parser.add_argument("tier", choices=tuple(TIERS), help="cloud: full TF model; edge: TFLite model (no TensorFlow)")
    parser.add_argument("--model", help=f"cloud: TF Hub handle (default: {CROPNET_HANDLE}), SavedModel dir or "
                                        "'standin' (offline stand-in, synthetic data); edge: model.tflite or a "
                                        "`cassava convert` dir (required); either tier: a model store, a folder "
                                        "of numbered versions STORE/1, STORE/2 ... (the highest verified one serves; "
                                        "new ones are picked up without a restart)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--http-port", type=int, help="REST port (cloud 8080, edge 9080)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port (cloud 8081, edge 9081)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus metrics port (cloud 8082, edge 9082)")
    parser.add_argument("--workers", type=int, help="MLServer parallel_workers: model copies in worker processes "
                                                     "(default from settings.json: 0 = in the server process)")
    add_model_spec_arguments(parser)
    add_escalation_arguments(parser, "images", "edge: send the images the edge model is unsure of to the cloud tier "
                             "at URL (http://HOST:PORT or the Seldon ingress path) and answer with its result")
    parser.add_argument("--escalate-timeout", type=float, metavar="S",
                        help="edge: seconds a request waits for its hard images' settlement before answering "
                             "provisionally (default 2; a request's settle_wait_s parameter overrides it)")
    parser.add_argument("--outbox", type=Path, metavar="DIR",
                        help="edge --escalate-to: where hard images wait for the cloud, on disk (default: "
                             "<cache>/outbox-<http port>; one edge per folder)")
    parser.add_argument("--allow-spec-change", action="store_true",
                        help="model store: let a new version change input size, pixel range or classes")
    parser.add_argument("--watch-interval", type=float, default=WATCH_INTERVAL_S,
                        help=f"model store: seconds between looks for new versions (at most {MAX_INTERVAL_S:g})")
    parser.add_argument("--model-control", metavar="closed|loopback|token:FILE",
                        help="who may call the model repository API (load/unload/index): closed (default: nobody), "
                             "loopback (this machine), token:FILE (the bearer token on FILE's first line); the same "
                             f"as {MODEL_CONTROL_ENV}=... in the environment (docs/threat-model.md)")
    parser.add_argument("--gate", type=Path, metavar="DIR",
                        help="the leaf gate to run (a folder written by `cassava convert`): how the cloud answers "
                             "`unknown` exactly as the edge does (the edge uses its model folder's own by default)")
    parser.add_argument("--no-gate", action="store_true", help="serve without the model folder's leaf gate")
    parser.add_argument("--no-page", action="store_true",
                        help="API only: no phone page on GET / (the same as CASSAVA_PAGE=off in the environment)")
    budget = parser.add_argument_group("decoding budget (defaults sized for a 1 GB Raspberry Pi; see shared/budget.py)")
    budget.add_argument("--max-image-pixels", type=int, metavar="N",
                        help=f"pixels one photo may declare (default {DEFAULT_MAX_IMAGE_PIXELS:,}: 8192x8192, above "
                             "every 12-64 MP phone photo); larger ones get 413")
    budget.add_argument("--max-request-pixels", type=int, metavar="N",
                        help=f"pixels one request's photos may declare in all (default {DEFAULT_MAX_REQUEST_PIXELS:,})")
    budget.add_argument("--max-decoding-pixels", type=int, metavar="N",
                        help=f"pixels decoded at once across requests, ~4 bytes each (default "
                             f"{DEFAULT_MAX_DECODING_PIXELS:,}, ~256 MB; 33554432 for a 512 MB Pi Zero 2)")
    budget.add_argument("--jpeg-draft", action="store_true",
                        help="decode JPEG photos of at least 4x the model's input on each side at 1/2-1/8 scale in "
                             "the DCT domain: 3x faster for 12 MP, but not the exact pixels (answers can change; "
                             "default: exact)")
    parser.add_argument("--run-dir", type=Path,
                        help="where the MLServer settings are written (default: a temporary dir)")


@dataclasses.dataclass
class ServeOptions:
    """What `cassava serve` is asked to do: the command's flags, by the same names."""
    tier: str
    model: Optional[str] = None
    host: str = "127.0.0.1"
    http_port: Optional[int] = None
    grpc_port: Optional[int] = None
    metrics_port: Optional[int] = None
    workers: Optional[int] = None
    input_scale: Optional[float] = None
    classes: Optional[Sequence[str]] = None
    escalate_to: Optional[str] = None
    escalate_below: Optional[float] = None
    audit_rate: Optional[float] = None
    escalate_timeout: Optional[float] = None
    outbox: Optional[Path] = None
    allow_spec_change: bool = False
    watch_interval: float = WATCH_INTERVAL_S
    model_control: Optional[str] = None
    gate: Optional[Path] = None
    no_gate: bool = False
    no_page: bool = False
    max_image_pixels: Optional[int] = None
    max_request_pixels: Optional[int] = None
    max_decoding_pixels: Optional[int] = None
    jpeg_draft: bool = False
    run_dir: Optional[Path] = None
    debug: bool = False

    @classmethod
    def from_args(cls, args) -> "ServeOptions":
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


def run(args) -> int:
    return serve_tier(ServeOptions.from_args(args))


def serve_tier(options: ServeOptions) -> int:
    """Check everything, write the run dir, then become the supervisor of `mlserver start` (exit code: its)."""
    tier = options.tier
    model = options.model or (CROPNET_HANDLE if tier == "cloud" else None)
    if not model:
        raise CassavaError("serve edge needs --model: a model.tflite or a folder made by `cassava convert`")
    if options.workers is not None and options.workers < 0:
        raise CassavaError(f"--workers must be 0 or more, not {options.workers}")
    defaults = TIERS[tier].ports
    ports = [p if p is not None else d
             for p, d in zip((options.http_port, options.grpc_port, options.metrics_port), defaults)]
    check_ports(options.host, ports)
    if not 0 < options.watch_interval <= MAX_INTERVAL_S:
        raise CassavaError(f"--watch-interval must be above 0 and at most {MAX_INTERVAL_S:g} s")
    debug = options.debug
    escalation = escalation_flags(options)
    if escalation and "escalate_outbox" not in escalation:  # per port: two edges on one machine never share one
        escalation["escalate_outbox"] = str(cache_dir() / f"outbox-{ports[0]}")
    decoding = decoding_settings(options)
    spec = check_model(tier, model, options.input_scale, options.classes, debug)
    extra = escalation and _preflight_escalation(escalation, spec)
    if options.model_control:
        ModelControl.parse(options.model_control)  # a bad value or token file is one line and exit 2, here
        os.environ[MODEL_CONTROL_ENV] = options.model_control  # MLServer inherits it
    if options.no_page:
        os.environ[PAGE_ENV] = "off"  # MLServer inherits it (exec, then the supervisor's child)
    run_dir = options.run_dir or Path(tempfile.mkdtemp(prefix=f"cassava-{tier}-"))
    try:
        run_dir = write_run_dir(run_dir, tier, model, options.host, ports, options.workers, options.input_scale,
                                options.classes, {**(extra or {}), **decoding,
                                                  **gate_settings(options.gate, options.no_gate)})
        if is_store(model):
            store_settings(run_dir, options.watch_interval, options.allow_spec_change)
    except BaseException:
        if not options.run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return exec_supervisor(run_dir, tier, spec, debug, remove=not options.run_dir)


def gate_settings(folder: Optional[Path], no_gate: bool) -> dict:
    """--gate / --no-gate as model-settings `parameters.extra` entries (the runtime's `_load_gate`)."""
    if no_gate:
        return {"no_gate": True}
    if folder is None:
        return {}
    if not tool("has_gate")(folder):
        raise CassavaError(f"--gate {folder}: no leaf gate there (a folder written by `cassava convert`)")
    return {"gate": str(Path(folder).resolve())}


def exec_supervisor(run_dir: Path, tier: str, spec, debug: bool, remove: bool) -> int:
    """Become the small supervisor of `mlserver start` (see supervise.py): the CLI's imports and the checked model
    leave memory with this process image. Where exec is not available, supervise from here."""
    command = [sys.executable, "-m", "cassava.shared.server.supervise", str(run_dir), tier]
    if spec is not None:
        command += ["--model-line", model_line(spec, run_dir)]
    command += ["--debug"] * debug + ["--remove-run-dir"] * remove
    sys.stdout.flush()
    sys.stderr.flush()
    if hasattr(os, "execv"):
        try:
            os.execv(sys.executable, command)
        except OSError:
            pass
    try:
        return serve(run_dir, tier, spec, debug)
    finally:
        if remove:
            shutil.rmtree(run_dir, ignore_errors=True)


# ---------------------------------------------------------------- checks before MLServer starts


def decoding_settings(options: ServeOptions) -> dict:
    """The budget flags given, as `parameters.extra` keys, checked together with the tier's shipped values."""
    given = {key: getattr(options, key) for key in ("max_image_pixels", "max_request_pixels", "max_decoding_pixels")}
    given = {key: value for key, value in given.items() if value is not None}
    if options.jpeg_draft:
        given["jpeg_draft"] = True
    shipped = TIERS[options.tier].model_settings().get("parameters", {}).get("extra", {})
    PixelLimits.from_extra({**shipped, **given})  # a CassavaError (one line, exit 2) when they do not fit together
    return given


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
        with native_stderr_silenced(not debug):  # LiteRT's "INFO: Created ... XNNPACK delegate" and the like
            load = TIERS["edge"].load_classifier
            if is_store(model):
                return StoreWatcher(model, lambda f: load(f, input_scale=input_scale, classes=classes)).first()[1].spec
            return load(model, input_scale=input_scale, classes=classes).spec
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                return ModelSpec.from_json(pool.submit(_cloud_spec, model, input_scale, classes, not debug).result())
            except BrokenProcessPool:
                raise CassavaError(f"model {model}: the process loading it died (out of memory?)"
                                   + ("" if debug else "; --debug shows its output")) from None
    finally:
        _stop_resource_tracker()


def _stop_resource_tracker() -> None:
    """A spawn pool starts multiprocessing's resource tracker, a child that exits once this process execs into the
    supervisor (its pipe closes); nobody would then wait for it and it stayed `<defunct>` in the server's process
    group for the server's whole life. Stopped and reaped here, before the exec."""
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)  # private, Python >= 3.8; harmless if gone
    if stop is not None:
        stop()


def _cloud_spec(model, input_scale, classes, quiet: bool) -> dict:
    if not quiet:  # --debug: this fresh process shows TensorFlow's native lines too (shared/native.py decides)
        logging.basicConfig(level=logging.DEBUG)
    try:
        load = TIERS["cloud"].load_classifier
        if is_store(model):
            return StoreWatcher(model, lambda f: load(str(f), input_scale=input_scale,
                                                      classes=classes)).first()[1].spec.to_json()
        return load(model, input_scale=input_scale, classes=classes).spec.to_json()
    except CassavaError:
        raise
    except Exception as exc:  # only a CassavaError is certain to cross the process boundary intact
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise CassavaError(f"model {model}: cannot load ({type(exc).__name__}: {first})") from None


def escalation_flags(options: ServeOptions) -> dict:
    """--escalate-* as model-settings `parameters.extra` entries (edge/escalate.py says what they mean)."""
    given = {"escalate_to": options.escalate_to, "escalate_below": options.escalate_below,
             "escalate_timeout_s": options.escalate_timeout, "escalate_audit_rate": options.audit_rate,
             "escalate_outbox": str(options.outbox.resolve()) if options.outbox else None}
    given = {key: value for key, value in given.items() if value is not None}
    if given and options.tier != "edge":
        raise CassavaError("--escalate-to is for the edge tier (it sends the images it is unsure of to the cloud)")
    if given and not options.escalate_to:
        raise CassavaError("--escalate-below, --escalate-timeout, --audit-rate and --outbox go with --escalate-to URL")
    return given


def _preflight_escalation(given: dict, spec) -> dict:
    return tool("escalation_preflight")(given, spec)


# ---------------------------------------------------------------- the run dir


def store_settings(run_dir: Path, interval: float, allow_spec_change: bool) -> None:
    """A model store's watch interval and spec rule, for the runtime (model-settings `parameters.extra`)."""
    path = run_dir / "model-settings.json"
    settings = json.loads(path.read_text())
    extra = settings["parameters"].setdefault("extra", {})
    extra.update(store_interval_s=float(interval), allow_spec_change=bool(allow_spec_change))
    path.write_text(json.dumps(settings, indent=2) + "\n")


def write_run_dir(run_dir, tier: str, model: str, host: str, ports, workers=None, input_scale=None,
                  classes=None, extra: dict = None) -> Path:
    """Copy the tier's settings into `run_dir` with this run's model, address and overrides. Returns the run dir."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    model_settings, settings = TIERS[tier].model_settings(), TIERS[tier].settings()

    parameters = model_settings.setdefault("parameters", {})
    # a relative path would be read relative to the run dir by MLServer; TF Hub handles and `standin` stay as they are
    parameters["uri"] = str(Path(model).resolve()) if is_model_path(model) else model
    if model_kind(model) == "standin":
        parameters["version"] = STANDIN_VERSION  # the served version says which stand-in answers
    elif model.rstrip("/") != CROPNET_HANDLE and tier == "cloud":
        parameters.pop("version", None)  # the shipped version names CropNet; another model is unversioned
    more_extra, extra = extra, parameters.setdefault("extra", {})
    if input_scale is not None:
        extra["input_scale"] = float(input_scale)
    if classes:
        extra["classes"] = ",".join(classes)
    extra.update(more_extra or {})  # escalation and decoding-budget flags

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
