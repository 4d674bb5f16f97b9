"""`cassava predict` / `python -m cassava.client`: classify images and plot predictions against labels.

The flow reads straight: image -> preprocess (shared) -> encode (v2) -> transport -> runtime -> decode -> label.
Where the model runs:
  --in-process      here, like the tutorial's app.py (TF, or the TFLite interpreter for .tflite)
  --local [URL]     MLServer on this machine (http://127.0.0.1:8080)
  --remote [URL]    the Seldon Core ingress (http://localhost:8003/seldon/<namespace>/<deployment>)
  --edge [URL]      the edge node (http://127.0.0.1:9080)
  --auto            the edge while it is healthy, else the cloud (`--cloud URL`), back to the edge when it returns
This module is the command: the flags, then `connect.py` (which backend), `classify.py` (the requests) and
`output.py` (what is printed and written). Servers are reached by `transport.py` (REST or gRPC) along a route from
`routing.py` (one tier, or failover).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional, Sequence

from ..arguments import add_model_spec_arguments
from ..console import say
from ..data import Sample, describe, load_samples
from ..errors import CassavaError
from ..protocol import DEFAULT_WIRE, WIRE_FORMATS
from ..spec import MODEL_NAME, STANDIN_NOTE
from .classify import classify_samples
from .connect import EDGE_URL, INGRESS_URL, LOCAL_URL, REMOTE_WIRE, chosen_mode, make_backend
from .output import summarize, tier_summary, top_k_text, write_outputs

__all__ = ["add_arguments", "run", "PredictOptions", "classify_and_report", "chosen_mode", "classify_samples",
           "default_limit"]
# A TFDS split holds thousands of images (cassava/validation: 1,889) that are downloaded and decoded first: by
# default classify 200, enough for an accuracy within about ±7 points, and say so.
TFDS_DEFAULT_N = 200


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
    add_model_spec_arguments(parser)
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
    wire.add_argument("--settle-wait", type=float, default=0.0, metavar="S",
                      help="--edge escalating to a cloud: after the run, wait up to S seconds for the images it "
                           "answered provisionally to be settled by the cloud (records then hold the final answer, "
                           "the edge's beside it as edge_prediction)")
    wire.add_argument("--probe-interval", type=float, default=3.0,
                      help="--auto: seconds between checks of a down edge")
    out = parser.add_argument_group("output")
    out.add_argument("--plot", type=Path, help="save the prediction grid (PNG) here")
    out.add_argument("--json", type=Path, help="save one record per image (JSON list) here")
    out.add_argument("--csv", type=Path, help="save one record per image (CSV) here")
    out.add_argument("--quiet", action="store_true", help="no progress bar")


@dataclasses.dataclass
class PredictOptions:
    """What `cassava predict` is asked to do: the command's flags, by the same names."""
    data: Sequence[str]
    in_process: bool = False
    local: Optional[str] = None
    remote: Optional[str] = None
    edge: Optional[str] = None
    auto: bool = False
    cloud: Optional[str] = None
    namespace: str = "default"
    deployment: str = "cassava"
    model_name: str = MODEL_NAME
    model: Optional[str] = None
    n: Optional[int] = None
    batch_size: int = 16
    input_scale: Optional[float] = None
    classes: Optional[Sequence[str]] = None
    wire: Optional[str] = None
    grpc: bool = False
    grpc_url: Optional[str] = None
    concurrency: int = 2
    timeout: float = 30.0
    retries: int = 3
    probe_interval: float = 3.0
    plot: Optional[Path] = None
    json: Optional[Path] = None
    csv: Optional[Path] = None
    quiet: bool = False
    settle_wait: float = 0.0

    @classmethod
    def from_args(cls, args) -> "PredictOptions":
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def default_limit(n: Optional[int], data: Sequence[str]) -> int:
    """-n, or its default: everything given, except a TFDS split (thousands of images, downloaded and decoded
    first): its first TFDS_DEFAULT_N, said on stderr."""
    if n is not None:
        return n
    splits = [str(d) for d in data if str(d).startswith("tfds:")]
    if not splits:
        return 0
    say(f"note: classifying the first {TFDS_DEFAULT_N} images of {' '.join(splits)} (the default for a TFDS split; "
        "-n N for another number, -n 0 for all of it)")
    return TFDS_DEFAULT_N


def run(args) -> int:
    return predict(PredictOptions.from_args(args))


def predict(options: PredictOptions) -> int:
    """Exit code 1 when a request failed or nothing was classified; unreadable images alone are skipped (and
    reported, each in its record) without failing the run."""
    if options.n is not None and options.n < 0:
        raise CassavaError("-n must be 0 (all) or more")
    if options.batch_size < 1 or options.concurrency < 1:
        raise CassavaError("--batch-size and --concurrency must be at least 1")
    mode = chosen_mode(options)  # conflicting flags fail before any data is read
    if options.settle_wait < 0 or (options.settle_wait and mode != "edge"):
        raise CassavaError("--settle-wait S: seconds (0 or more), with --edge URL (an edge started with --escalate-to)")
    samples = load_samples(options.data, default_limit(options.n, options.data) or None)
    backend = make_backend(options, mode)
    try:
        settle = None
        if options.settle_wait:
            from ..protocol.transport import check_base_url

            settle = (check_base_url(options.edge), options.model_name, options.settle_wait)
        return classify_and_report(backend, samples, describe(options.data), options.batch_size,
                                   options.concurrency, not options.quiet, options.plot, options.json, options.csv,
                                   settle)
    finally:
        backend.close()


def classify_and_report(backend, samples: List[Sample], data_description: str, batch_size: int = 16,
                        concurrency: int = 2, progress: bool = True, plot: Optional[Path] = None,
                        json_path: Optional[Path] = None, csv_path: Optional[Path] = None,
                        settle: Optional[tuple] = None) -> int:
    """Classify, write the plot/JSON/CSV, print the summary. Returns the exit code (1: a request failed).
    `settle`: (edge base URL, model name, seconds) to follow provisional answers to their settlement (settle.py)."""
    records, thumbnails = classify_samples(backend, samples, batch_size, progress=progress, concurrency=concurrency)
    if settle:
        from .settle import follow_settlements

        follow_settlements(records, *settle)
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
