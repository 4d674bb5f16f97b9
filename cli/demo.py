"""`cassava demo`: the whole cloud/edge split offline, on the stand-in model (stand-in model, synthetic data).

1. build the stand-in (cached)            2. convert it to an int8 TFLite copy: the edge's model
3. start the cloud and the edge server    4. classify the same photos through `--local` and `--edge`
5. the field: an edge escalating to the cloud over an emulated slow link, hard photos settled later (demo_field.py)
6. the comparison report, when `cassava compare` is installed
7. stop the servers, whatever happened (errors and Ctrl-C too), and say where everything is.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from cassava.shared.errors import CassavaError
from cassava.shared.spec import REPORT_FILE, STANDIN_NOTE, TFLITE_FILE


def add_arguments(parser):
    parser.add_argument("--out", type=Path, default=Path("out/demo"), help="where models, plots and reports go")
    parser.add_argument("-n", type=int, default=16, help="images to classify on each tier (default 16)")
    parser.add_argument("--port-offset", type=int, default=0,
                        help="add this to the default ports (cloud 8080-8082, edge 9080-9082); busy ports are "
                             "replaced by free ones")
    parser.add_argument("--skip-compare", action="store_true", help="no comparison report")


def _cassava(*args) -> list:
    return [sys.executable, "-m", "cassava", *map(str, args)]


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _run_logged(command, log: Path, what: str) -> None:
    """A sub-command with its output in `log`; a failure is one line naming the log."""
    with open(log, "w") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode
    if code != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        raise CassavaError(f"{what} failed: {lines[-1] if lines else f'exit code {code}'} (log: {log})")


def choose_ports(tier: str, offset: int):
    """The tier's default ports plus the offset, or three free ones when any is busy (and say so)."""
    from cassava.shared.server.process import free_port
    from cassava.shared.server.serve import check_ports
    from cassava.shared.tiers import TIERS

    wanted = [p + offset for p in TIERS[tier].ports]
    try:
        check_ports("127.0.0.1", wanted)
        return wanted
    except CassavaError as busy:
        ports = []
        while len(set(ports)) < 3:
            ports = [free_port() for _ in wanted]
        print(f"{tier}: ports {'/'.join(map(str, wanted))} are not usable ({busy}); using free ports "
              f"{'/'.join(map(str, ports))} instead", flush=True)
        return ports


def tier_server(tier: str, model, ports, out: Path, *flags, name: str = ""):
    """`cassava serve TIER` in its own process group (it and its MLServer stop together), output in a log file.
    `name` (default: the tier) names its run folder and log."""
    from cassava.shared.server.process import ServerProcess

    name = name or tier
    command = _cassava("serve", tier, "--model", model, "--http-port", ports[0], "--grpc-port", ports[1],
                       "--metrics-port", ports[2], "--run-dir", out / "run" / name, *flags)
    server = ServerProcess(command, f"http://127.0.0.1:{ports[0]}/v2/models/cassava/ready",
                           out / "logs" / f"{name}-server.log", name=f"the {name} server")
    server.tier, server.ports, server.url = tier, ports, f"http://127.0.0.1:{ports[0]}"
    return server


def _stop_on_sigterm(*_):
    raise SystemExit(143)  # unwinds through `finally`, so the servers are stopped on `kill` too


def classify_through(tier: str, url: str, n: int, out: Path, name: str = "", settle=None, batch_size: int = 16) -> dict:
    """What `cassava predict --local|--edge URL --data standin [--settle-wait S] [--batch-size B]` does, on the
    stand-in's photos; plot and JSON in `out`, named by `name` (default: the tier). `settle`: (edge URL, model name,
    seconds)."""
    from cassava.shared.client.backends import ServerBackend
    from cassava.shared.client.predict import classify_and_report
    from cassava.shared.data import load_samples

    paths = {"plot": out / f"predictions-{name or tier}.png", "json": out / f"predictions-{name or tier}.json"}
    backend = ServerBackend(url, tier=tier)
    try:
        code = classify_and_report(backend, load_samples(["standin"], n), "standin", batch_size=batch_size,
                                   plot=paths["plot"], json_path=paths["json"], settle=settle)
    finally:
        backend.close()
    records = json.loads(paths["json"].read_text())
    labelled = [r for r in records if r.get("prediction") and r.get("label")]
    right = sum(r["prediction"] == r["label"] for r in labelled)
    return {"url": url, "exit_code": code, "images": len(records), "right": right, "labelled": len(labelled),
            **{k: str(v) for k, v in paths.items()}}


def run(args) -> int:
    # here, not at import: every command module is imported to build the parser, and an edge-only install (a Pi)
    # has no httpx, which the field step's client needs
    from cassava.demo_field import field_step, field_text

    if args.n < 1:
        raise CassavaError("-n must be at least 1")
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    print(f"cassava demo: the cloud/edge split offline ({STANDIN_NOTE}; TF Hub and TFDS are not needed)")

    _step("1/6 the stand-in model")
    from cassava.cloud.standin import ensure_standin

    print(f"stand-in SavedModel: {ensure_standin()}")

    _step("2/6 the edge's copy: int8 TFLite")
    edge_model = out / "edge-int8"
    _run_logged(_cassava("convert", "--model", "standin", "--out", edge_model, "--quantize", "int8", "--quiet"),
                out / "logs" / "convert.log", "cassava convert")
    print(f"int8 TFLite: {edge_model / TFLITE_FILE} (conversion report: {edge_model / REPORT_FILE})")

    _step("3/6 the servers")
    # the cloud runs the edge folder's leaf gate too, so both answer `unknown` alike (docs/leaf-gate.md)
    gate = ("--gate", edge_model) if (Path(edge_model) / "leaf-gate.json").is_file() else ()
    servers = [tier_server("cloud", "standin", choose_ports("cloud", args.port_offset), out, *gate),
               tier_server("edge", edge_model, choose_ports("edge", args.port_offset), out)]
    summary = {"note": STANDIN_NOTE, "out": str(out), "edge_model": str(edge_model / TFLITE_FILE)}
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        for server in servers:
            server.launch()
        for server in servers:
            try:
                server.wait_ready(timeout=600)
            except RuntimeError as exc:
                raise CassavaError(str(exc)) from None
            print(f"{server.tier} server ready: {server.url} (gRPC 127.0.0.1:{server.ports[1]}, "
                  f"metrics :{server.ports[2]}; log {server.log_path})", flush=True)
        cloud, edge = servers

        _step("4/6 the same photos through the cloud (--local) and the edge (--edge)")
        summary["cloud"] = classify_through("cloud", cloud.url, args.n, out)
        summary["edge"] = classify_through("edge", edge.url, args.n, out)

        _step(f"5/6 the field: the edge escalating to the cloud over an emulated slow link ({STANDIN_NOTE})")
        summary["field"] = field_step(cloud, json.loads(Path(summary["edge"]["json"]).read_text()), out,
                                      lambda name, *flags: _field_server(edge_model, out, name, *flags),
                                      lambda name, url, settle: classify_through("edge", url, args.n, out, name,
                                                                                 settle, batch_size=1))

        _step("6/6 the comparison report")
        summary["compare"] = compare_report(out, edge_model, args.skip_compare)
    finally:
        for server in servers:
            server.stop()
        signal.signal(signal.SIGTERM, previous)
        print("servers stopped", flush=True)

    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nEverything is in {out} ({STANDIN_NOTE}):")
    for tier in ("cloud", "edge"):
        row = summary[tier]
        print(f"  {tier:<6} {row['right']}/{row['labelled']} right  plot {row['plot']}  records {row['json']}")
    print(f"  {field_text(summary['field'])}  records {summary['field']['json']}")
    print(f"  edge model  {summary['edge_model']}")
    print(f"  compare     {summary['compare']}")
    print(f"  logs        {out / 'logs'}   summary {out / 'summary.json'}")
    return max(summary[tier]["exit_code"] for tier in ("cloud", "edge", "field"))


def _field_server(edge_model: Path, out: Path, name: str, *flags):
    """The field step's edge, on three free ports, started and ready (or a one-line error)."""
    from cassava.shared.server.process import free_port

    ports = []
    while len(set(ports)) < 3:
        ports = [free_port() for _ in range(3)]
    server = tier_server("edge", edge_model, ports, out, *flags, name=name)
    server.launch()
    try:
        server.wait_ready(timeout=600)
    except RuntimeError as exc:
        server.stop()
        raise CassavaError(str(exc)) from None
    print(f"{name} server ready: {server.url} (log {server.log_path})", flush=True)
    return server


def compare_report(out: Path, edge_model: Path, skip: bool) -> str:
    if skip:
        return "skipped (--skip-compare)"
    try:
        import cassava.shared.evaluate.compare  # noqa: F401
    except ImportError:
        return "not installed (cassava.shared.evaluate.compare is absent)"
    _run_logged(_cassava("compare", "--cloud-model", "standin", "--edge-model", edge_model, "--data", "standin",
                         "--out", out / "compare", "--quiet"), out / "logs" / "compare.log", "cassava compare")
    print(f"report: {out / 'compare'} (log {out / 'logs' / 'compare.log'})")
    return str(out / "compare")
