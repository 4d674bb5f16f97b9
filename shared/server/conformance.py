"""What MLServer 1.7 does outside the Open Inference Protocol or an operator's needs, put right in one place.
(The REST answers' shapes, error objects and health bodies, are rest.py's; this is what lives behind it.)

  metric labels   MLServer labels `model_infer_request_*` with the model name and version from the URL, so any
                  client could add series without bound (a memory leak), and REST says version "None" where gRPC
                  says "". Here only a loaded model's name and its version become label values; anything else is
                  counted under UNKNOWN_MODEL with version "".
  extensions      `GET /v2` lists the binary data extension (rest.py serves it); MLServer lists none.
  gRPC ops        `grpc.health.v1.Health/Check` (Kubernetes' gRPC probes, grpc_health_probe) and server reflection
                  (grpcurl) on the gRPC port, beside MLServer's inference and model repository services.
                  Health/Watch (streaming) stays UNIMPLEMENTED: probes call Check.
  not ready       a request to a model still loading is 503 / gRPC UNAVAILABLE (MLServer: 400 / INVALID_ARGUMENT,
                  a "bad request"), so clients retry it as the transient fault it is; a client that asked whether
                  the model was ready after a 400 could find it ready by then and give up on a good request.
  gRPC logs       a client's mistake (an MLServerError below 500: bad input, unknown model, too large) is one INFO
                  line, not an ERROR with a traceback; server faults stay ERROR with their traceback.

Each is a patch of MLServer internals made by `install()` when the model repository module is imported (before
MLServer builds its data plane and servers). `check_in_force()` runs when a model loads and fails closed, as rest.py
does; tests/test_oip.py checks each behaviour on real servers, so an MLServer upgrade that moves them fails there.
"""
from __future__ import annotations

import logging

UNKNOWN_MODEL = "<unknown>"
BINARY_EXTENSION = "binary_tensor_data"  # Triton's name for the binary data extension, which tritonclient knows
HEALTH_LIVE = "live"  # the Health service name that asks "is the process serving?"; "" and others ask readiness

_MARK = "_cassava_oip"


class _KnownLabels:
    """A labelled prometheus metric whose `model`/`version` labels can only be a loaded model's."""

    def __init__(self, metric, registry):
        self._metric = metric
        self._registry = registry

    def labels(self, model=None, version=None):
        return self._metric.labels(*metric_labels(self._registry, model, version))


def metric_labels(registry, name, version):
    """-> (model, version) label values: the loaded model's own, or (UNKNOWN_MODEL, "")."""
    single = registry._models.get(name) if isinstance(name, str) else None
    model = single._find_model(version or None) if single is not None else None
    if model is None:
        return UNKNOWN_MODEL, ""
    return name, model.version or ""


def _patch_data_plane():
    from mlserver.handlers.dataplane import DataPlane

    original = DataPlane.__init__
    if getattr(original, _MARK, False):
        return

    def __init__(self, settings, model_registry):
        original(self, settings, model_registry)
        for attribute in ("_ModelInferRequestSuccess", "_ModelInferRequestFailure", "_ModelInferRequestDuration"):
            setattr(self, attribute, _KnownLabels(getattr(self, attribute), model_registry))
        if BINARY_EXTENSION not in settings.extensions:
            settings.extensions = [*settings.extensions, BINARY_EXTENSION]

    setattr(__init__, _MARK, True)
    DataPlane.__init__ = __init__


def _health_servicer(data_plane):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from mlserver.errors import MLServerError

    class Health(health_pb2_grpc.HealthServicer):
        """Check: "live" -> SERVING while the process answers; "" or the inference service -> SERVING once every
        model is ready (OIP's server ready); a model's name -> that model's readiness; anything else NOT_FOUND."""

        async def Check(self, request, context):
            import grpc

            service = request.service
            if service == HEALTH_LIVE:
                ok = await data_plane.live()
            elif service in ("", "inference.GRPCInferenceService"):
                ok = await data_plane.ready()
            else:
                try:
                    ok = await data_plane.model_ready(service)
                except MLServerError:
                    await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service!r}")
            status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
            return health_pb2.HealthCheckResponse(status=status)

    return Health()


def _patch_grpc_server():
    from mlserver.grpc.server import GRPCServer

    original = GRPCServer._create_server
    if getattr(original, _MARK, False):
        return

    def _create_server(self):
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection
        from mlserver.grpc import dataplane_pb2, model_repository_pb2

        server = original(self)
        health_pb2_grpc.add_HealthServicer_to_server(_health_servicer(self._data_plane), server)
        services = [dataplane_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
                    model_repository_pb2.DESCRIPTOR.services_by_name["ModelRepositoryService"].full_name,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(services, server)
        setattr(server, _MARK, True)
        return server

    setattr(_create_server, _MARK, True)
    GRPCServer._create_server = _create_server


NOT_READY_STATUS = 503


def _patch_not_ready():
    import grpc
    from mlserver import errors
    from mlserver.grpc.utils import STATUS_CODE_MAPPING

    STATUS_CODE_MAPPING.setdefault(NOT_READY_STATUS, grpc.StatusCode.UNAVAILABLE)
    init = errors.ModelNotReady.__init__
    if getattr(init, _MARK, False):
        return

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.status_code = NOT_READY_STATUS

    setattr(__init__, _MARK, True)
    errors.ModelNotReady.__init__ = __init__


class ClientMistakes(logging.Filter):
    """On MLServer's gRPC logger: an MLServerError below 500 (the client's mistake), or a model still loading, becomes
    one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from mlserver.errors import ModelNotReady

        error = record.exc_info[1] if record.exc_info else None
        status = getattr(error, "status_code", 500)
        if error is not None and isinstance(status, int) and (status < 500 or isinstance(error, ModelNotReady)):
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            record.msg, record.args = f"gRPC request refused ({status}): {error}", ()
            record.exc_info = record.exc_text = None
        return True


def _grpc_logger():
    from mlserver.grpc.logging import logger

    return logger


def install() -> None:
    _patch_data_plane()
    _patch_not_ready()
    _patch_grpc_server()
    logger = _grpc_logger()
    if not any(isinstance(f, ClientMistakes) for f in logger.filters):
        logger.addFilter(ClientMistakes())


def check_in_force() -> None:
    """Raise unless the patches above are in place in a process that runs MLServer's data plane (none at all is
    fine, as in rest.check_in_force: a runtime loaded in-process or in a worker serves nothing itself)."""
    import gc

    from mlserver.grpc.server import GRPCServer
    from mlserver.handlers.dataplane import DataPlane

    from ..errors import CassavaError

    planes = [o for o in gc.get_objects() if isinstance(o, DataPlane)]
    if not planes:
        return
    missing = [what for what, ok in (
        ("bounded metric labels", all(isinstance(p._ModelInferRequestFailure, _KnownLabels) for p in planes)),
        ("gRPC health and reflection", getattr(GRPCServer._create_server, _MARK, False)),
        ("gRPC client-mistake logging", any(isinstance(f, ClientMistakes) for f in _grpc_logger().filters)),
        ("503 while a model loads", _not_ready_is_unavailable()),
    ) if not ok]
    if missing:
        raise CassavaError(f"cassava's MLServer conformance patches are not in force ({', '.join(missing)}): refusing "
                           "to serve. Is settings.json's model_repository_implementation "
                           "cassava.shared.server.repository.CassavaModelRepository?")


def _not_ready_is_unavailable() -> bool:
    from mlserver.errors import ModelNotReady

    return ModelNotReady("model").status_code == NOT_READY_STATUS
