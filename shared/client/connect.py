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


def chosen_mode(options) -> str:
    """The one place the mode flags are reconciled (`--edge URL` is also --auto's preferred tier)."""
    if options.auto:
        others = [f for f, v in (("--in-process", options.in_process), ("--local", options.local),
                                 ("--remote", options.remote))
                  if v is not None and v is not False]
        if others:
            raise CassavaError(f"--auto chooses between --edge and --cloud; drop {', '.join(others)} "
                               "(give the cloud as --cloud URL)")
        return "auto"
    given = [m for m, v in (("in-process", options.in_process), ("local", options.local), ("remote", options.remote),
                            ("edge", options.edge))
             if v is not None and v is not False]
    if len(given) > 1:
        raise CassavaError(f"choose one of --{', --'.join(given)}")
    if options.cloud:
        raise CassavaError("--cloud is the --auto fallback; for the cloud alone use --local URL or --remote URL")
    return given[0] if given else "in-process"


def remote_url(url: Optional[str], namespace: str, deployment: str) -> str:
    """A bare ingress address gets Seldon's `/seldon/<namespace>/<deployment>` prefix; a URL with a path is used
    as is."""
    from urllib.parse import urlsplit

    from ..protocol.transport import check_base_url

    base = check_base_url(url or INGRESS_URL)
    return base if urlsplit(base).path else f"{base}/seldon/{namespace}/{deployment}"


def make_backend(options, mode: str):
    """The backend for `mode` (from `chosen_mode(options)`); `options`: predict's PredictOptions."""
    if mode == "in-process":
        return InProcessBackend(options.model or CROPNET_HANDLE, input_scale=options.input_scale,
                                classes=options.classes)
    if options.model:
        raise CassavaError("--model is for --in-process; a server classifies with the model it serves "
                           "(cassava serve --model)")
    if options.timeout <= 0 or options.retries < 0 or options.probe_interval <= 0:
        raise CassavaError("--timeout and --probe-interval must be above 0, --retries 0 or more")
    route, tier = make_route(options, mode)
    try:
        wire = options.wire or (REMOTE_WIRE if mode == "remote" else DEFAULT_WIRE)
        return ServerBackend(route, wire=wire, input_scale=options.input_scale, classes=options.classes, tier=tier)
    except BaseException:
        route.close()
        raise


def make_route(options, mode: str):
    """-> (route, tier name): one server, or --auto's edge with the cloud as fallback."""
    from ..protocol.transport import make_transport
    from .routing import Endpoint, FailoverRoute, SingleRoute

    grpc = bool(options.grpc or options.grpc_url)
    retrying = dict(timeout=options.timeout, retries=options.retries)
    if mode == "auto":
        if options.grpc_url:
            raise CassavaError("--auto with --grpc uses each tier's HTTP port + 1; --grpc-url names one server only")
        # A connection error on the edge is an answer in itself: fall back at once rather than retry a dead Pi.
        edge = Endpoint("edge", make_transport(options.edge or EDGE_URL, options.model_name, grpc,
                                               **{**retrying, "retries": 0}))
        cloud = Endpoint("cloud", make_transport(options.cloud or LOCAL_URL, options.model_name, grpc, **retrying))
        return FailoverRoute(edge, cloud, probe_interval_s=options.probe_interval), "auto"
    headers = ()
    if mode == "remote":
        url = remote_url(options.remote, options.namespace, options.deployment)
        headers = (("seldon", options.deployment), ("namespace", options.namespace))  # Seldon's gRPC routing
    else:
        url = options.local if mode == "local" else options.edge
    tier = "edge" if mode == "edge" else "cloud"
    transport = make_transport(url, options.model_name, grpc, options.grpc_url, headers, **retrying)
    return SingleRoute(Endpoint(tier, transport)), tier
