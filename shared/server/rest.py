"""The one ASGI layer in front of MLServer's REST app, for what MLServer 1.7 lacks: a request-body size limit (413).

Without it, a client can make the server buffer and JSON-parse a body of any size. gRPC already has one
(`grpc_max_message_length` in settings.json). The limit comes from `CASSAVA_MAX_REQUEST_BYTES` (default 64 MiB: a
batch of 16 images as the tutorial's float JSON is about 46 MB).

MLServer has no middleware hook, so `install()` wraps its REST app factory; the model repository named in
settings.json imports this before MLServer builds its app. Because that is a patch of MLServer internals,
`check_in_force()` runs when a model loads and fails closed: the model does not load, and `mlserver start` stops,
if any REST app in the process lacks the layer.
"""
from __future__ import annotations

import json
import os

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024


def max_request_bytes() -> int:
    return int(os.environ.get("CASSAVA_MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES))


class BodySizeLimit:
    """ASGI middleware: 413 when Content-Length, or the bytes actually streamed, exceed `max_bytes`."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                return await self._refuse(send, int(declared))
            return await self.app(scope, receive, send)  # the server reads no more than it declared
        # Chunked upload with no declared size: read it here, up to the limit, then hand it on.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, receive, send)  # client went away
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._refuse(send, size)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send, size: int):
        body = json.dumps({"error": f"request body of {size:,} bytes is above the limit of {self.max_bytes:,} bytes "
                                    f"(send fewer images per request, or the compact wire format)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def install() -> None:
    """Wrap MLServer's REST app factory once, so every app it builds has the body limit."""
    import mlserver.rest.server as rest_server

    original = rest_server.create_app
    if getattr(original, "_cassava_limited", False):
        return

    def create_app(*args, **kwargs):
        app = original(*args, **kwargs)
        app.add_middleware(BodySizeLimit, max_bytes=max_request_bytes())
        return app

    create_app._cassava_limited = True
    rest_server.create_app = create_app


def check_in_force() -> None:
    """Raise unless every MLServer REST app in this process carries the layer (none at all is fine: a runtime
    loaded in-process, or in one of MLServer's worker processes, serves no REST)."""
    import gc

    from mlserver.rest.server import RESTServer

    from ..errors import CassavaError

    servers = [o for o in gc.get_objects() if isinstance(o, RESTServer)]
    for server in servers:
        middleware = getattr(getattr(server, "_app", None), "user_middleware", None)
        if middleware is None or not any(m.cls is BodySizeLimit for m in middleware):
            raise CassavaError("the REST request-body limit is not in force (MLServer's REST app was built without "
                               "cassava's layer): refusing to serve. Is settings.json's model_repository_implementation "
                               "cassava.shared.server.repository.CassavaModelRepository?")
