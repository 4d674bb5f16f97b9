"""Who may do what on a tier's ports (docs/threat-model.md): model control closed by default, a fair share per client.

  model control   MLServer serves its model repository API (REST `/v2/repository/...`, gRPC `RepositoryIndex`,
                  `RepositoryModelLoad`, `RepositoryModelUnload`) to whoever can connect: one request unloads the
                  model. Here it is refused (REST 403 with OIP's error object, gRPC PERMISSION_DENIED: the endpoint
                  exists, this caller may not use it; 404/UNIMPLEMENTED would tell a client the server lacks it)
                  unless `model_control` opens it: `loopback` (callers on this machine) or `token:FILE` (a bearer
                  token, the file's first line, in the `Authorization` header or gRPC metadata). Model changes go
                  through the version store (`cassava models`), which needs none of it.
  fair share      of the requests that make the node work (REST POST, gRPC ModelInfer and ModelStreamInfer), at most
                  `requests_per_client` per source address work at once and `queued_per_client` more wait for that
                  client's own turn; above that REST 429 with `Retry-After`, gRPC RESOURCE_EXHAUSTED, before the
                  body is read and `refusal_delay_s` late (a client in a tight loop that ignores Retry-After then
                  costs the node a few refusals per second per connection, not hundreds). A concurrency limit, not
                  a rate: an idle node still answers one client as fast as it can, and a client in a loop gets its
                  share, no more.
                  `exempt_clients` (default: this machine's own loopback addresses) are never limited.

Every refusal is counted in `cassava_guard_refused_total{protocol, reason}`. The settings come from settings.json's
`model_repository_implementation_args` (the tier's defaults: edge/settings.json limits each client, the cloud, behind
an ingress where every request has the ingress' address, does not), each overridden by `CASSAVA_<NAME>` in the
environment (`CASSAVA_MODEL_CONTROL=loopback`, `CASSAVA_REQUESTS_PER_CLIENT=0`, ...).
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from ..errors import CassavaError

MODEL_CONTROL_ENV = "CASSAVA_MODEL_CONTROL"
REPOSITORY_PATH = "/v2/repository"
REPOSITORY_METHODS = ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")
INFER_METHODS = ("ModelInfer", "ModelStreamInfer")


@dataclass(frozen=True)
class GuardSettings:
    """Limits for one server. Numbers chosen for a Raspberry Pi 4 on a farm's WiFi (docs/threat-model.md)."""

    model_control: str = "closed"  # closed | loopback | token:FILE
    header_timeout_s: float = 10.0  # connection open (or first byte of a request) -> its headers complete
    body_timeout_s: float = 20.0  # longest silence while a request body arrives
    keep_alive_s: int = 5  # idle between requests on one connection (uvicorn's default, stated)
    max_connections: int = 512  # REST connections at once; a Pi's default open-file limit is 1024
    connections_per_client: int = 0  # REST connections at once per source address (0: no limit)
    requests_per_client: int = 0  # POST / ModelInfer working at once per source address (0: no limit) ...
    queued_per_client: int = 0  # ... and waiting for that client's turn; any more are refused
    retry_after_s: int = 1
    refusal_delay_s: float = 0.5  # a refusal is answered this late: a client ignoring Retry-After gets few per second
    exempt_clients: Tuple[str, ...] = ("127.0.0.1", "::1")  # never limited per client: this machine's own agent

    @classmethod
    def from_args(cls, args: Optional[dict] = None, environ=None) -> "GuardSettings":
        """From settings.json's model_repository_implementation_args, each overridden by CASSAVA_<NAME>."""
        environ = os.environ if environ is None else environ
        args = dict(args or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise CassavaError(f"settings.json model_repository_implementation_args: unknown {', '.join(unknown)} "
                               f"(known: {', '.join(known)})")
        values = {}
        for name, field in known.items():
            raw = environ.get(f"CASSAVA_{name.upper()}")
            value = args.get(name, field.default) if raw is None else _parse(raw, field.default, name)
            if isinstance(field.default, tuple):
                value = tuple(value.split(",") if isinstance(value, str) else value)
            values[name] = value
        settings = cls(**values)
        settings.control()  # a bad model_control is one error at start, not a refusal later
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s", "max_connections", "retry_after_s"):
            if not getattr(settings, name) > 0:
                raise CassavaError(f"guard setting {name} must be above 0, not {getattr(settings, name)}")
        return settings

    def control(self) -> "ModelControl":
        return ModelControl.parse(self.model_control)


def _parse(raw: str, default, name: str):
    try:
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            return raw
        return type(default)(raw)
    except ValueError:
        raise CassavaError(f"CASSAVA_{name.upper()}={raw!r}: not a number") from None


class ModelControl:
    """Who may call the model repository API: nobody (closed), callers on this machine (loopback), or callers
    presenting the bearer token in a file (token:FILE)."""

    def __init__(self, mode: str, token: Optional[str] = None):
        self.mode, self._token = mode, token

    @classmethod
    def parse(cls, text: str) -> "ModelControl":
        text = (text or "closed").strip()
        if text in ("closed", "loopback"):
            return cls(text)
        if text.startswith("token:"):
            path = Path(text[len("token:"):])
            try:
                token = path.read_text().strip().splitlines()[0].strip() if path.is_file() else ""
            except (OSError, IndexError):
                token = ""
            if len(token) < 16:
                raise CassavaError(f"model control {text!r}: {path} must hold a token of at least 16 characters "
                                   "on its first line")
            return cls("token", token)
        raise CassavaError(f"model control {text!r}: use closed, loopback or token:FILE")

    def allows(self, client: str, authorization: Optional[str]) -> bool:
        if self.mode == "loopback":
            return is_loopback(client)
        if self.mode == "token":
            given = (authorization or "").strip()
            return given.lower().startswith("bearer ") and hmac.compare_digest(given[7:].strip(), self._token)
        return False

    def refusal(self) -> str:
        how = {"closed": f"it is closed on this server (set {MODEL_CONTROL_ENV}=loopback or token:FILE, or "
                         "`cassava serve --model-control`, to open it)",
               "loopback": "it is open to callers on this machine only",
               "token": "it needs the bearer token (Authorization: Bearer ...)"}[self.mode]
        return f"model repository API refused: {how}; models change through the version store (`cassava models`)"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ClientShare:
    """Each source address' requests: at most `limit` working at once, up to `queued` more waiting for the client's
    own turn (first come, first served), any beyond refused. A client's extra requests wait behind its own, never in
    front of other clients'. 0: no limit."""

    def __init__(self, limit: int, queued: int = 0, exempt=()):
        self.limit, self.queued, self.exempt = limit, queued, frozenset(exempt)
        self._turns: dict = {}  # client -> (asyncio.Semaphore, requests admitted: working + waiting)

    def limited(self, client: str) -> bool:
        return self.limit > 0 and client not in self.exempt

    def admit(self, client: str) -> bool:
        """Take a place (True), or refuse (False). An admitted request then awaits `turn(client)`."""
        if not self.limited(client):
            return True
        turn, admitted = self._turns.get(client) or (asyncio.Semaphore(self.limit), 0)
        if admitted >= self.limit + self.queued:
            return False
        self._turns[client] = (turn, admitted + 1)
        return True

    async def turn(self, client: str) -> None:
        if self.limited(client):
            await self._turns[client][0].acquire()

    def leave(self, client: str, started: bool = True) -> None:
        if not self.limited(client):
            return
        turn, admitted = self._turns[client]
        if started:
            turn.release()
        if admitted <= 1:
            del self._turns[client]
        else:
            self._turns[client] = (turn, admitted - 1)

    async def run(self, client: str, call):
        """`await call()` in the client's turn (after `admit`)."""
        started = False
        try:
            await self.turn(client)
            started = True
            return await call()
        finally:
            self.leave(client, started)

    def refusal(self, client: str) -> str:
        return (f"too many requests from {client} at once (at most {self.limit} working and {self.queued} waiting "
                "per client)")


_METRICS = {}


def refused(protocol: str, reason: str) -> None:
    """Count one refusal; the counter is made on first use, after MLServer set prometheus' multi-process mode."""
    if not _METRICS:
        created()
    _METRICS["refused"].labels(protocol, reason).inc()


def created() -> None:
    """Register the counter (MLServer's metrics endpoint serves prometheus' default registry)."""
    if not _METRICS:
        from prometheus_client import REGISTRY
        from prometheus_client import Counter as PromCounter

        _METRICS["refused"] = PromCounter("cassava_guard_refused", "Requests and connections refused or cut by the "
                                          "guard (docs/threat-model.md)", ["protocol", "reason"], registry=REGISTRY)


# ---------------------------------------------------------------- REST: ASGI middleware


class GuardLayer:
    """ASGI middleware, outermost: the repository API refused unless model control allows the caller; each client's
    share of POST requests. Answers carry OIP's error object."""

    def __init__(self, app, settings: GuardSettings):
        self.app = app
        self.control = settings.control()
        self.share = ClientShare(settings.requests_per_client, settings.queued_per_client, settings.exempt_clients)
        self.retry_after, self.delay = settings.retry_after_s, settings.refusal_delay_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("",))[0]
        path = scope.get("path", "")[len(scope.get("root_path", "")):] if scope.get("root_path") else scope["path"]
        if path == REPOSITORY_PATH or path.startswith(REPOSITORY_PATH + "/"):
            authorization = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if not self.control.allows(client, authorization):
                refused("rest", "model_control")
                return await answer(send, 403, self.control.refusal())
        if scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        if not self.share.admit(client):
            refused("rest", "fair_share")
            await asyncio.sleep(self.delay)
            return await answer(send, 429, f"{self.share.refusal(client)}: retry after {self.retry_after} s",
                                [(b"retry-after", str(self.retry_after).encode())])
        return await self.share.run(client, lambda: self.app(scope, receive, send))


async def answer(send, status: int, message: str, headers=()):
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        *headers, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------- gRPC: a server interceptor


def peer_host(peer: str) -> str:
    """'ipv4:10.0.0.7:51234' / 'ipv6:[::1]:51234' -> the address."""
    kind, _, rest = (peer or "").partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return rest


def _metadata(context, key: str) -> Optional[str]:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            return item.value if isinstance(item.value, str) else item.value.decode("latin-1")
    return None


def grpc_interceptor(settings: GuardSettings):
    """A grpc.aio server interceptor doing what GuardLayer does on REST."""
    import grpc

    control = settings.control()
    share = ClientShare(settings.requests_per_client, settings.queued_per_client, settings.exempt_clients)

    def allowed(context) -> bool:
        return control.allows(peer_host(context.peer()), _metadata(context, "authorization"))

    class GuardInterceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            handler = await continuation(details)
            name = details.method.rsplit("/", 1)[-1]
            if handler is None or name not in REPOSITORY_METHODS + INFER_METHODS:
                return handler
            if name in REPOSITORY_METHODS:
                return _wrap(handler, lambda context: None if allowed(context) else (
                    "model_control", grpc.StatusCode.PERMISSION_DENIED, control.refusal()))
            return _wrap(handler, lambda context: _admit(share, context), share, settings.refusal_delay_s)

    def _admit(share, context):
        client = peer_host(context.peer())
        if share.admit(client):
            return None
        return "fair_share", grpc.StatusCode.RESOURCE_EXHAUSTED, f"{share.refusal(client)}: retry later"

    return GuardInterceptor()


async def _refuse_unless_admitted(admit, context, delay: float) -> None:
    """`admit(context)` -> None, or (reason, code, message): then counted and aborted, `delay` seconds late."""
    refusal = admit(context)
    if refusal is not None:
        refused("grpc", refusal[0])
        await asyncio.sleep(delay)
        await context.abort(refusal[1], refusal[2])


def _wrap(handler, admit, share: ClientShare = None, delay: float = 0.0):
    """The handler with `admit(context)` first (None, or (reason, code, message) to refuse, `delay` seconds late),
    then run in the client's turn when `share` is given."""
    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary_unary(request, context):
            await _refuse_unless_admitted(admit, context, delay)
            if share is None:
                return await inner(request, context)
            return await share.run(peer_host(context.peer()), lambda: inner(request, context))

        return handler._replace(unary_unary=unary_unary)
    if handler.stream_stream is not None:
        inner_stream = handler.stream_stream

        async def stream_stream(requests, context):
            await _refuse_unless_admitted(admit, context, delay)
            client, started = peer_host(context.peer()), False
            try:
                if share is not None:
                    await share.turn(client)
                    started = True
                async for response in inner_stream(requests, context):
                    yield response
            finally:
                if share is not None:
                    share.leave(client, started)

        return handler._replace(stream_stream=stream_stream)
    return handler
