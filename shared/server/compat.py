"""Everything MLServer 1.7.1 lacks, applied in one place, explicitly, when a server starts (`apply()`).

MLServer builds its servers in `MLServer.__init__`: model repository (the class settings.json names), then the
DataPlane, then the REST and gRPC servers. The repository this project's settings name
(repository.CassavaModelRepository) calls `apply()` from its constructor, so everything below is in place before
anything it changes is built; nothing happens on import. `apply()` refuses any other MLServer version: each item
relies on 1.7.1's internals, and tests/test_oip.py checks every behaviour on real servers.

Where MLServer or its libraries have a seam it is used; where not, the smallest wrapper, each naming what it stands
in for:

  REST layers     MLServer's `create_app` takes no middleware (upstream: no way to add ASGI middleware). Wrapped in
                  `RESTServer.__init__`: `REST_LAYERS` are added with Starlette's `add_middleware` (innermost
                  first): the phone page (page.py), the OIP/body-limit/binary layer (rest.py), the guard (guard.py).
  REST transport  uvicorn's Config is built in `RESTServer._get_config` and `MetricsServer._get_config` (MLServer's
                  only knob, `_custom_rest_server_settings`, logs "out of support"): wrapped to use
                  connections.GuardedH11 and the stated keep-alive (header/body deadlines, connection caps).
  gRPC layers     `GRPCServer._create_server` fixes its interceptor list (upstream TODO "custom gRPC endpoints"): the
                  grpc.aio server it makes is given `grpc_interceptors()` first (outermost), its options get
                  connections.grpc_options, and Health (health.py: grpc_health's servicer, Check and Watch) and
                  server reflection (grpcurl) are added.
  gRPC errors     MLServer's ServerLive/ServerReady/ModelReady have no error handler, so an unknown model is
                  `UNKNOWN: Unexpected <class ModelNotFound>`; every MLServerError escaping a handler is mapped here as
                  its `handle_mlserver_error` maps it (ModelNotFound -> NOT_FOUND), with codes MLServer lacks:
                  403 PERMISSION_DENIED, 413/429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE (its table: 400/404/422/500).
  gRPC logs       a client's mistake (an MLServerError below 500, or a model still loading) is one INFO line, not an
                  ERROR with a traceback (a filter on MLServer's gRPC logger).
  metric labels   `DataPlane.__init__` wrapped: MLServer labels `model_infer_request_*` with the model name and
                  version from the URL, so any client could add series without bound, and REST says version "None"
                  where gRPC says "". Only a loaded model's name and version become label values; anything else is
                  counted under UNKNOWN_MODEL with version "".
  extensions      `GET /v2` lists the binary data extension (rest.py serves it); MLServer lists none.
  not ready       a request to a model still loading is 503 / UNAVAILABLE (MLServer: 400 / INVALID_ARGUMENT, a "bad
                  request"), so clients retry it as the transient fault it is (`ModelNotReady.__init__` wrapped).

Servers and data planes are registered as they are made (weak sets); `check_in_force()`, run when a model loads,
fails closed if one was made without its layers.

Adding to it: a REST route a model serves (e.g. a settlement endpoint) uses MLServer's own seam,
`@mlserver.handlers.custom_handler(rest_path=..., rest_method=...)` on a runtime method: MLServer adds the route when
the model loads (also with parallel workers) and it sits inside every layer here (guard, body limit, OIP error
objects). A path answered in front of MLServer's routing, as page.py does, is an ASGI middleware class put in
`rest_layers()` (inside RestLayer for the body limit and error objects; GuardLayer stays last, outermost). A gRPC
concern is a `grpc.aio.ServerInterceptor` in `grpc_interceptors()`; another gRPC service is added in `_create_server`
beside Health.
"""
from __future__ import annotations

import logging
import weakref

from ..errors import CassavaError
from . import connections, guard, page, rest, settlements
from .health import DataPlaneHealth

MLSERVER_VERSION = "1.7.1"
UNKNOWN_MODEL = "<unknown>"
BINARY_EXTENSION = "binary_tensor_data"  # Triton's name for the binary data extension, which tritonclient knows
NOT_READY_STATUS = 503

_PLANES = weakref.WeakSet()
_REST = weakref.WeakSet()
_GRPC = weakref.WeakSet()
_STATE = {"settings": None}
_MARK = "_cassava_compat"


def rest_layers(settings: guard.GuardSettings) -> list:
    """(middleware class, options) added around MLServer's REST app, innermost first. A module that needs to answer
    a path before MLServer routes it adds its middleware here."""
    layers = [(settlements.SettlementLayer, {})]  # GET .../settlements/{id} (settlements.py)
    layers += [(page.PageLayer, {})] if page.enabled() else []
    return layers + [(rest.RestLayer, {"max_bytes": rest.max_request_bytes()}),
                     (guard.GuardLayer, {"settings": settings})]


def grpc_interceptors(settings: guard.GuardSettings) -> list:
    """grpc.aio server interceptors, outermost first, ahead of MLServer's own (metrics, logging, tracing)."""
    return [guard.grpc_interceptor(settings), ErrorMapping()]


# ---------------------------------------------------------------- apply and check


def apply(settings: guard.GuardSettings = None) -> None:
    """Put everything above in place (idempotent; the latest settings win). Raises CassavaError on another
    MLServer version."""
    import mlserver

    if mlserver.__version__ != MLSERVER_VERSION:
        raise CassavaError(f"cassava needs mlserver=={MLSERVER_VERSION} (its compatibility layer, "
                           f"shared/server/compat.py, relies on that version's internals); this is mlserver "
                           f"{mlserver.__version__}: pip install mlserver=={MLSERVER_VERSION}")
    _STATE["settings"] = settings or guard.GuardSettings()
    connections.configure(_STATE["settings"])
    _status_codes()
    _patch_data_plane()
    _patch_not_ready()
    _patch_rest_server()
    _patch_grpc_server()
    logger = _grpc_logger()
    if not any(isinstance(f, ClientMistakes) for f in logger.filters):
        logger.addFilter(ClientMistakes())


def applied() -> bool:
    return _STATE["settings"] is not None


def check_in_force() -> None:
    """Raise unless every REST server, gRPC server and data plane made in this process has its layers. A process
    with no data plane (a runtime loaded in-process, or in one of MLServer's workers) serves nothing itself."""
    missing = []
    for server in list(_REST):
        middleware = getattr(getattr(server, "_app", None), "user_middleware", None) or []
        if not any(m.cls is rest.RestLayer for m in middleware):
            missing.append("the REST layer (body limit, binary data extension, OIP answers)")
        if not any(m.cls is guard.GuardLayer for m in middleware):
            missing.append("the REST guard (model control, fair share)")
    planes = list(_PLANES)
    if planes:
        if not applied():
            missing.append("compat.apply()")
        if not _REST:
            missing.append("a REST server built with the layers")
        if not all(isinstance(p._ModelInferRequestFailure, _KnownLabels) for p in planes):
            missing.append("bounded metric labels")
        if not all(getattr(s._create_server, _MARK, False) for s in _GRPC) or not _GRPC:
            missing.append("gRPC interceptors, health and reflection")
        if not any(isinstance(f, ClientMistakes) for f in _grpc_logger().filters):
            missing.append("gRPC client-mistake logging")
    if missing:
        what = "; ".join(dict.fromkeys(missing))
        raise CassavaError(f"cassava's MLServer compatibility layer is not in force ({what}): refusing to serve. "
                           "Is settings.json's model_repository_implementation "
                           "cassava.shared.server.repository.CassavaModelRepository?")


# ---------------------------------------------------------------- REST


def _patch_rest_server():
    from mlserver.metrics.server import MetricsServer
    from mlserver.rest.server import RESTServer

    init, get_config = RESTServer.__init__, RESTServer._get_config
    if getattr(init, _MARK, False):
        return

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        settings = _STATE["settings"]
        for layer, options in rest_layers(settings):
            self._app.add_middleware(layer, **options)
        guard.created()
        _REST.add(self)

    setattr(__init__, _MARK, True)
    RESTServer.__init__, RESTServer._get_config = __init__, _guarded_config(get_config)
    MetricsServer._get_config = _guarded_config(MetricsServer._get_config)  # the metrics port is uvicorn too


def _guarded_config(get_config):
    def _get_config(self):
        config = get_config(self)
        for name, value in connections.uvicorn_overrides(_STATE["settings"]).items():
            setattr(config, name, value)
        return config

    setattr(_get_config, _MARK, True)
    return _get_config


# ---------------------------------------------------------------- gRPC


def _patch_grpc_server():
    import mlserver.grpc.server as grpc_server

    GRPCServer = grpc_server.GRPCServer
    create, get_options = GRPCServer._create_server, GRPCServer._get_options
    if getattr(create, _MARK, False):
        return

    def _get_options(self):
        options = dict(get_options(self))
        options.update(connections.grpc_options(_STATE["settings"]))
        return list(options.items())

    def _create_server(self):
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection
        from mlserver.grpc import dataplane_pb2, model_repository_pb2

        real_aio = grpc_server.aio
        grpc_server.aio = _AioWith(real_aio, grpc_interceptors(_STATE["settings"]))
        try:
            server = create(self)
        finally:
            grpc_server.aio = real_aio
        health = DataPlaneHealth(self._data_plane)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        health.start_polling()
        services = [dataplane_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
                    model_repository_pb2.DESCRIPTOR.services_by_name["ModelRepositoryService"].full_name,
                    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(services, server)
        _GRPC.add(self)
        return server

    setattr(_create_server, _MARK, True)
    GRPCServer._create_server, GRPCServer._get_options = _create_server, _get_options


class _AioWith:
    """grpc.aio as MLServer's `_create_server` sees it for one call: `server()` gets our interceptors first."""

    def __init__(self, real, interceptors):
        self._real, self._interceptors = real, interceptors

    def server(self, *args, interceptors=None, **kwargs):
        return self._real.server(*args, interceptors=[*self._interceptors, *(interceptors or [])], **kwargs)

    def __getattr__(self, name):
        return getattr(self._real, name)


def _status_codes():
    import grpc
    from mlserver.grpc.utils import STATUS_CODE_MAPPING

    for status, code in ((403, grpc.StatusCode.PERMISSION_DENIED), (413, grpc.StatusCode.RESOURCE_EXHAUSTED),
                         (429, grpc.StatusCode.RESOURCE_EXHAUSTED), (NOT_READY_STATUS, grpc.StatusCode.UNAVAILABLE)):
        STATUS_CODE_MAPPING.setdefault(status, code)


def _grpc_code(error):
    import grpc
    from mlserver.grpc.utils import STATUS_CODE_MAPPING

    return STATUS_CODE_MAPPING.get(error.status_code, grpc.StatusCode.UNKNOWN)


def ErrorMapping():
    """A grpc.aio interceptor: an MLServerError escaping a unary handler is aborted with its mapped code."""
    import grpc

    class ErrorMapping(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            handler = await continuation(details)
            if handler is None or handler.unary_unary is None:
                return handler
            inner = handler.unary_unary

            async def unary_unary(request, context):
                from mlserver.errors import MLServerError

                try:
                    return await inner(request, context)
                except MLServerError as error:
                    await context.abort(_grpc_code(error), str(error))

            return handler._replace(unary_unary=unary_unary)

    return ErrorMapping()


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


# ---------------------------------------------------------------- data plane


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
        _PLANES.add(self)

    setattr(__init__, _MARK, True)
    DataPlane.__init__ = __init__


def _patch_not_ready():
    from mlserver import errors

    init = errors.ModelNotReady.__init__
    if getattr(init, _MARK, False):
        return

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.status_code = NOT_READY_STATUS

    setattr(__init__, _MARK, True)
    errors.ModelNotReady.__init__ = __init__
