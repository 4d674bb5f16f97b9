"""`cassava predict` / `python -m cassava.client`: classify images and plot predictions against labels.

The flow reads straight: image -> preprocess (shared) -> encode (v2) -> transport -> runtime -> decode -> label.
Where the model runs:
  --in-process      here, like the tutorial's app.py (TF, or the TFLite interpreter for .tflite)
  --local [URL]     MLServer on this machine (http://127.0.0.1:8080)
  --remote [URL]    the Seldon Core ingress (http://localhost:8003/seldon/<namespace>/<deployment>)
  --edge [URL]      the edge node (http://127.0.0.1:9080)
  --auto            the edge while it is healthy, else the cloud (`--cloud URL`), back to the edge when it returns
Servers are reached by `transport.py` (REST or gRPC) along a route from `routing.py` (one tier, or failover).
"""
from __future__ import annotations

import csv
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..console import say
from ..data import Sample, describe, load_samples
from ..errors import BadImage, CassavaError
from ..labels import display_name, parse_class_list, top_k
from ..preprocess import preprocess
from ..protocol import DEFAULT_WIRE, WIRE_FORMATS
from ..spec import CROPNET_HANDLE, STANDIN_NOTE
from ..tiers import TIERS
from .backends import InProcessBackend, ServerBackend

RECORD_KEYS = ("file", "label", "prediction", "probability", "tier", "latency_ms")
MODEL_NAME = "cassava"
LOCAL_URL = TIERS["cloud"].url()
EDGE_URL = TIERS["edge"].url()
# A TFDS split holds thousands of images (cassava/validation: 1,889) that are downloaded and decoded first: by
# default classify 200, enough for an accuracy within about ±7 points, and say so.
TFDS_DEFAULT_N = 200
# Through the Seldon ingress the request also crosses Seldon's executor, which was never run here with the binary
# data extension (nginx passes it): there the default is the JSON-only compact wire.
REMOTE_WIRE = "compact"
INGRESS_URL = "http://localhost:8003"  # `kubectl port-forward` to the Seldon/Istio ingress, as in Seldon's docs


# ---------------------------------------------------------------- command line


def add_arguments(parser):
    where = parser.add_argument_group("where the model runs (one of; default --in-process)")
    where.add_argument("--in-process", action="store_true", help="run the model in this process")
    where.add_argument("--local", nargs="?", const=LOCAL_URL, metavar="URL",
                       help=f"MLServer on this machine (default {LOCAL_URL})")
    where.add_argument("--remote", nargs="?", const="", metavar="URL",
                       help=f"the Seldon Core ingress (default {INGRESS_URL}/seldon/NAMESPACE/DEPLOYMENT); "
                            "any base URL")
    where.add_argument("--edge", nargs="?", const=EDGE_URL, metavar="URL", help=f"the edge node (default {EDGE_URL})")
    where.add_argument("--auto", action="store_true",
                       help="the edge (--edge URL) while it is healthy, else the cloud (--cloud URL); "
                            "back to the edge when it returns")
    where.add_argument("--cloud", metavar="URL",
                       help=f"--auto's fallback: any base URL, e.g. the remote ingress (default {LOCAL_URL})")
    where.add_argument("--namespace", default="default", help="--remote: Seldon namespace")
    where.add_argument("--deployment", default="cassava", help="--remote: SeldonDeployment name")
    where.add_argument("--model-name", default=MODEL_NAME, help="model name on the server")
    parser.add_argument("--model", help="--in-process: TF Hub handle (default: CropNet), SavedModel dir, .tflite or "
                                        "converted dir, or 'standin' (offline stand-in, synthetic data)")
    parser.add_argument("--data", nargs="+", required=True, metavar="DATA",
                        help="tfds:cassava/validation, a folder with one sub-folder per class, image files, or "
                             "'standin' (the stand-in's synthetic photos)")
    parser.add_argument("-n", type=int, help=f"classify the first N images (default: every image given; for a TFDS "
                                              f"split the first {TFDS_DEFAULT_N}, said on stderr; 0 = all)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model call / request")
    parser.add_argument("--input-scale", type=float, choices=(1.0, 255.0),
                        help="model pixel range: 1 = [0,1], 255 = raw 0-255")
    parser.add_argument("--classes", type=parse_class_list,
                        help="class names in model output order, e.g. cbb,cbsd,cgm,cmd,healthy")
    wire = parser.add_argument_group("talking to a server")
    wire.add_argument("--wire", choices=tuple(WIRE_FORMATS),
                      help=f"default {DEFAULT_WIRE}; {REMOTE_WIRE} through --remote (the binary data extension is not "
                           "proven through Seldon's executor). "
                           + "; ".join(f"{name}: {what}" for name, what in WIRE_FORMATS.items()))
    wire.add_argument("--grpc", action="store_true",
                      help="gRPC instead of REST (port: the HTTP port + 1, or --grpc-url)")
    wire.add_argument("--grpc-url", metavar="HOST:PORT", help="gRPC address (implies --grpc)")
    wire.add_argument("--concurrency", type=int, default=2, help="requests in flight at once")
    wire.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each answer")
    wire.add_argument("--retries", type=int, default=3,
                      help="retries after a connection error or 5xx (never after a 4xx), with exponential backoff")
    wire.add_argument("--probe-interval", type=float, default=3.0,
                      help="--auto: seconds between checks of a down edge")
    out = parser.add_argument_group("output")
    out.add_argument("--plot", type=Path, help="save the prediction grid (PNG) here")
    out.add_argument("--json", type=Path, help="save one record per image (JSON list) here")
    out.add_argument("--csv", type=Path, help="save one record per image (CSV) here")
    out.add_argument("--quiet", action="store_true", help="no progress bar")


def chosen_mode(args) -> str:
    """The one place the mode flags are reconciled (`--edge URL` is also --auto's preferred tier)."""
    if args.auto:
        others = [f for f, v in (("--in-process", args.in_process), ("--local", args.local), ("--remote", args.remote))
                  if v is not None and v is not False]
        if others:
            raise CassavaError(f"--auto chooses between --edge and --cloud; drop {', '.join(others)} "
                               "(give the cloud as --cloud URL)")
        return "auto"
    given = [m for m, v in (("in-process", args.in_process), ("local", args.local), ("remote", args.remote),
                            ("edge", args.edge))
             if v is not None and v is not False]
    if len(given) > 1:
        raise CassavaError(f"choose one of --{', --'.join(given)}")
    if args.cloud:
        raise CassavaError("--cloud is the --auto fallback; for the cloud alone use --local URL or --remote URL")
    return given[0] if given else "in-process"


def remote_url(url: Optional[str], namespace: str, deployment: str) -> str:
    """A bare ingress address gets Seldon's `/seldon/<namespace>/<deployment>` prefix; a URL with a path is used
    as is."""
    from urllib.parse import urlsplit

    from ..protocol.transport import check_base_url

    base = check_base_url(url or INGRESS_URL)
    return base if urlsplit(base).path else f"{base}/seldon/{namespace}/{deployment}"


def make_backend(args):
    mode = chosen_mode(args)
    if mode == "in-process":
        return InProcessBackend(args.model or CROPNET_HANDLE, input_scale=args.input_scale, classes=args.classes)
    from ..protocol.transport import make_transport
    from .routing import Endpoint, FailoverRoute, SingleRoute

    if args.model:
        raise CassavaError("--model is for --in-process; a server classifies with the model it serves "
                           "(cassava serve --model)")
    if args.timeout <= 0 or args.retries < 0 or args.probe_interval <= 0:
        raise CassavaError("--timeout and --probe-interval must be above 0, --retries 0 or more")
    grpc = bool(args.grpc or args.grpc_url)
    options = dict(timeout=args.timeout, retries=args.retries)
    if mode == "auto":
        if args.grpc_url:
            raise CassavaError("--auto with --grpc uses each tier's HTTP port + 1; --grpc-url names one server only")
        # A connection error on the edge is an answer in itself: fall back at once rather than retry a dead Pi.
        edge = Endpoint("edge", make_transport(args.edge or EDGE_URL, args.model_name, grpc,
                                               **{**options, "retries": 0}))
        cloud = Endpoint("cloud", make_transport(args.cloud or LOCAL_URL, args.model_name, grpc, **options))
        route, tier = FailoverRoute(edge, cloud, probe_interval_s=args.probe_interval), "auto"
    else:
        headers = ()
        if mode == "remote":
            url = remote_url(args.remote, args.namespace, args.deployment)
            headers = (("seldon", args.deployment), ("namespace", args.namespace))  # Seldon's gRPC routing headers
        else:
            url = args.local if mode == "local" else args.edge
        tier = "edge" if mode == "edge" else "cloud"
        transport = make_transport(url, args.model_name, grpc, args.grpc_url, headers, **options)
        route = SingleRoute(Endpoint(tier, transport))
    try:
        wire = args.wire or (REMOTE_WIRE if mode == "remote" else DEFAULT_WIRE)
        return ServerBackend(route, wire=wire, input_scale=args.input_scale, classes=args.classes, tier=tier)
    except BaseException:
        route.close()
        raise


# ---------------------------------------------------------------- classifying


def _failed_record(sample: Sample, error: str, unanswered: bool) -> dict:
    """`unanswered`: the request failed (server or network), as opposed to an unreadable image."""
    return {"file": sample.name, "label": sample.label, "prediction": None, "probability": None,
            "tier": None, "latency_ms": None, "error": error, "unanswered": unanswered}


def classify_chunk(backend, chunk: List[Sample], size: int):
    """One request's worth: [(thumbnail or None, record)] in chunk order; every sample gets a record."""
    from ..protocol.transport import TransportError

    errors, good, pixels, unanswered = {}, [], [], set()
    for sample in chunk:
        try:
            pixels.append(preprocess(sample.source, size))
            good.append(sample)
        except BadImage as exc:
            errors[id(sample)] = str(exc)
            say(f"skipped {sample.name}: {exc}")
    results = {}
    if good:
        batch = np.stack(pixels)
        started = time.perf_counter()
        try:
            answer = backend.classify(batch, good)
        except (TransportError, BadImage) as exc:  # a 4xx keeps the server's message; 5xx/unreachable after retries
            say(f"{len(good)} image(s) failed: {exc}")
            errors.update((id(s), str(exc)) for s in good)
            unanswered = {id(s) for s in good}
        else:
            latency_ms = (time.perf_counter() - started) * 1000.0 / len(good)
            names = answer.class_names
            for sample, image, best, probs, tier in zip(good, batch, answer.class_ids, answer.probabilities,
                                                        answer.tiers):
                results[id(sample)] = (image, {
                    "file": sample.name, "label": sample.label, "prediction": names[best],
                    "probability": round(float(probs[best]), 6), "tier": tier, "latency_ms": round(latency_ms, 3),
                    "probabilities": {c: round(float(p), 6) for c, p in zip(names, probs)},
                })
    return [results.get(id(s)) or (None, _failed_record(s, errors.get(id(s), "not classified"), id(s) in unanswered))
            for s in chunk]


def classify_samples(backend, samples: List[Sample], batch_size: int, progress: bool = True, concurrency: int = 1):
    """Preprocess, classify and label every sample, `concurrency` requests at a time; a bad image or a failed
    request becomes a record with an `error`, never a gap. Returns (records, thumbnails) in sample order."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm import tqdm

    size = backend.spec.input_size
    batch_size = max(1, batch_size)
    chunks = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]
    threads = max(1, min(concurrency, len(chunks), getattr(backend, "threads", None) or concurrency))
    results = [None] * len(chunks)
    bar = tqdm(total=len(samples), unit="img", disable=not progress, file=sys.stderr, desc="classifying")
    try:
        if threads == 1:
            for index, chunk in enumerate(chunks):
                results[index] = classify_chunk(backend, chunk, size)
                bar.update(len(chunk))
        else:
            pool = ThreadPoolExecutor(threads, thread_name_prefix="classify")
            try:
                futures = {pool.submit(classify_chunk, backend, chunk, size): i for i, chunk in enumerate(chunks)}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update(len(chunks[futures[future]]))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C: drop what has not started
    finally:
        bar.close()
    pairs = [pair for chunk_results in results for pair in chunk_results]
    return [record for _, record in pairs], [image for image, _ in pairs]


def tier_summary(records, default: str) -> str:
    """`edge`, `cloud`, or for --auto how many each tier answered: `edge 40, cloud 24`."""
    counts = Counter(r["tier"] for r in records if r.get("prediction"))
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{tier} {n}" for tier, n in counts.most_common()) if counts else default


def summarize(records, title: str, tier: str) -> str:
    done = [r for r in records if r.get("prediction")]
    failed = len(records) - len(done)
    labelled = [r for r in done if r["label"] is not None]
    text = f"{len(done)} image{'' if len(done) == 1 else 's'} classified"
    if labelled:
        right = sum(r["label"] == r["prediction"] for r in labelled)
        text += f", {right}/{len(labelled)} right ({right / len(labelled):.1%})"
    if failed:
        text += f", {failed} failed (reported above)"
    return f"{text}; model: {title}; tier: {tier}"


def top_k_text(record: dict, k: int = 3) -> str:
    """The classic Raspberry Pi classifier output: top guesses with display names, and the time it took."""
    ranked = top_k(record["probabilities"].values(), record["probabilities"].keys(), k)
    lines = [f"{record['file']}  ({record['latency_ms']:.1f} ms, {record['tier']})"]
    lines += [f"  {i}. {display_name(name):<22} {name:<8} {p:6.1%}" for i, (name, p) in enumerate(ranked, 1)]
    return "\n".join(lines)


def write_outputs(records, thumbnails, title: str, tier: str, plot: Optional[Path], json_path: Optional[Path],
                  csv_path: Optional[Path]):
    public = [{k: r.get(k) for k in RECORD_KEYS} | ({"error": r["error"]} if r.get("error") else {}) for r in records]
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(public, indent=2) + "\n")
    if csv_path:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(RECORD_KEYS) + ["error"])
            writer.writeheader()
            writer.writerows(public)
    if plot:
        from .plotting import plot_predictions

        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_predictions(thumbnails, records, f"{title} — tier: {tier}", plot)


def default_limit(args) -> int:
    """-n, or its default: everything given, except a TFDS split (thousands of images, downloaded and decoded
    first): its first TFDS_DEFAULT_N, said on stderr."""
    if args.n is not None:
        return args.n
    splits = [str(d) for d in args.data if str(d).startswith("tfds:")]
    if not splits:
        return 0
    say(f"note: classifying the first {TFDS_DEFAULT_N} images of {' '.join(splits)} (the default for a TFDS split; "
        "-n N for another number, -n 0 for all of it)")
    return TFDS_DEFAULT_N


def run(args) -> int:
    """Exit code 1 when a request failed or nothing was classified; unreadable images alone are skipped (and
    reported, each in its record) without failing the run."""
    if args.n is not None and args.n < 0:
        raise CassavaError("-n must be 0 (all) or more")
    if args.batch_size < 1 or args.concurrency < 1:
        raise CassavaError("--batch-size and --concurrency must be at least 1")
    chosen_mode(args)  # conflicting flags fail before any data is read
    samples = load_samples(args.data, default_limit(args) or None)
    backend = make_backend(args)
    try:
        return classify_and_report(backend, samples, describe(args.data), args.batch_size, args.concurrency,
                                   not args.quiet, args.plot, args.json, args.csv)
    finally:
        backend.close()


def classify_and_report(backend, samples: List[Sample], data_description: str, batch_size: int = 16,
                        concurrency: int = 2, progress: bool = True, plot: Optional[Path] = None,
                        json_path: Optional[Path] = None, csv_path: Optional[Path] = None) -> int:
    """Classify, write the plot/JSON/CSV, print the summary. Returns the exit code (1: a request failed)."""
    records, thumbnails = classify_samples(backend, samples, batch_size, progress=progress, concurrency=concurrency)
    title = backend.title
    if "standin" in data_description and STANDIN_NOTE not in title:
        title = f"{title} ({STANDIN_NOTE})"
    tier = tier_summary(records, backend.tier)
    write_outputs(records, thumbnails, title, tier, plot, json_path, csv_path)
    done = [r for r in records if r.get("prediction")]
    if len(samples) == 1 and done:
        print(top_k_text(done[0]))
    print(summarize(records, title, tier))
    for label, path in (("plot", plot), ("json", json_path), ("csv", csv_path)):
        if path:
            print(f"{label}: {path}")
    return 0 if done and not any(r.get("unanswered") for r in records) else 1


def main(argv=None) -> int:
    from cassava.cli import main as cli_main

    return cli_main(["predict", *(sys.argv[1:] if argv is None else argv)])
