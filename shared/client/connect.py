"""Where `cassava predict` sends its images: the mode flags reconciled once, and the backend they ask for (in this
process, one server, or the edge with failover to the cloud), Seldon's routing headers included."""
from __future__ import annotations

from typing import Optional

from ..errors import CassavaError
from ..protocol import DEFAULT_WIRE
from ..spec import CROPNET_HANDLE
from ..tiers import TIERS
from .backends import InProcessBackend, ServerBackend

LOCAL_URL = TIERS["cloud"].url()
EDGE_URL = TIERS["edge"].url()
# Through the Seldon ingress the request also crosses Seldon's executor, which was never run here with the binary
# data extension (nginx passes it): there the default is the JSON-only compact wire.
REMOTE_WIRE = "compact"
INGRESS_URL = "http://localhost:8003"  # `kubectl port-forward` to the Seldon/Istio ingress, as in Seldon's docs


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


def make_backend(args, mode: str):
    """The backend for `mode` (from `chosen_mode(args)`)."""
    if mode == "in-process":
        return InProcessBackend(args.model or CROPNET_HANDLE, input_scale=args.input_scale, classes=args.classes)
    if args.model:
        raise CassavaError("--model is for --in-process; a server classifies with the model it serves "
                           "(cassava serve --model)")
    if args.timeout <= 0 or args.retries < 0 or args.probe_interval <= 0:
        raise CassavaError("--timeout and --probe-interval must be above 0, --retries 0 or more")
    route, tier = make_route(args, mode)
    try:
        wire = args.wire or (REMOTE_WIRE if mode == "remote" else DEFAULT_WIRE)
        return ServerBackend(route, wire=wire, input_scale=args.input_scale, classes=args.classes, tier=tier)
    except BaseException:
        route.close()
        raise


def make_route(args, mode: str):
    """-> (route, tier name): one server, or --auto's edge with the cloud as fallback."""
    from ..protocol.transport import make_transport
    from .routing import Endpoint, FailoverRoute, SingleRoute

    grpc = bool(args.grpc or args.grpc_url)
    options = dict(timeout=args.timeout, retries=args.retries)
    if mode == "auto":
        if args.grpc_url:
            raise CassavaError("--auto with --grpc uses each tier's HTTP port + 1; --grpc-url names one server only")
        # A connection error on the edge is an answer in itself: fall back at once rather than retry a dead Pi.
        edge = Endpoint("edge", make_transport(args.edge or EDGE_URL, args.model_name, grpc,
                                               **{**options, "retries": 0}))
        cloud = Endpoint("cloud", make_transport(args.cloud or LOCAL_URL, args.model_name, grpc, **options))
        return FailoverRoute(edge, cloud, probe_interval_s=args.probe_interval), "auto"
    headers = ()
    if mode == "remote":
        url = remote_url(args.remote, args.namespace, args.deployment)
        headers = (("seldon", args.deployment), ("namespace", args.namespace))  # Seldon's gRPC routing headers
    else:
        url = args.local if mode == "local" else args.edge
    tier = "edge" if mode == "edge" else "cloud"
    transport = make_transport(url, args.model_name, grpc, args.grpc_url, headers, **options)
    return SingleRoute(Endpoint(tier, transport)), tier
