"""The one ASGI layer in front of MLServer's REST app, for what MLServer 1.7 lacks on REST:

  body limit      a request body above `CASSAVA_MAX_REQUEST_BYTES` (default 64 MiB: a batch of 16 images as the
                  tutorial's float JSON is about 46 MB) gets a 413, whether declared, streamed or gzip-compressed.
                  gRPC has its own (`grpc_max_message_length` in settings.json).
  binary data     the V2 binary tensor data extension on `/v2/models/{name}[/versions/{v}]/infer`, which
                  `tritonclient.http` uses by default: a framed request (`Inference-Header-Content-Length`) becomes
                  the JSON request MLServer routes as usual (protocol/binary.py: binary inputs as base64), and the
                  JSON answer goes back framed when the request asks for binary outputs. Malformed framing: 400.
  OIP answers     what MLServer answers outside the Open Inference Protocol is put in its shape (`_oip_answer`):
                  a failed request's body is OIP's error object `{"error": "<message>"}` (MLServer's own request
                  validation says `{"detail": ...}`; its 422 becomes OIP's 400, a 404/405 keeps its code), and the
                  health answers carry OIP's bodies (`{"live": true}`, `{"ready": true}`, model ready
                  `{"name": ..., "ready": true}`) where MLServer sends none (KServe's REST client reads them).

Translating in front of MLServer, rather than answering binary requests here, keeps MLServer's routing, model
lookup, error answers, metrics and tracing the same for every request.

compat.py adds this layer to every REST app MLServer builds (MLServer has no middleware hook), and its
`check_in_force()` fails closed, when a model loads, if an app lacks it.
"""
from __future__ import annotations

import json
import logging
import os
import re
import zlib
from urllib.parse import unquote

import orjson  # MLServer's own JSON library

from ..protocol import binary

DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024

log = logging.getLogger("cassava.rest")


def max_request_bytes() -> int:
    return int(os.environ.get("CASSAVA_MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES))


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _is_infer(scope) -> bool:
    path = scope.get("path", "")
    return scope.get("method") == "POST" and path.endswith("/infer") and "/v2/models/" in path


class RestLayer:
    """ASGI middleware: OIP's answer shapes and the body limit on every request; the binary data extension on infer
    requests."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = _oip_answer(send, scope)  # error objects and health bodies, whoever answers below
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        try:
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise self._too_large(int(declared))
            if not _is_infer(scope):
                if declared is not None:
                    return await self.app(scope, receive, send)  # the server reads no more than it declared
                body = await self._read(receive)  # chunked, no declared size: counted here, up to the limit
                if body is None:
                    return await self.app(scope, receive, send)  # client went away
                return await self.app(scope, _replay(body, receive), send)
            body = await self._read(receive)
            if body is None:
                return await self.app(scope, receive, send)
            return await self._infer(scope, headers, body, receive, send)
        except _Refused as refused:
            await answer_json(send, refused.status, {"error": str(refused)})

    async def _infer(self, scope, headers, body: bytes, receive, send):
        rewritten, request = False, None
        encoding = headers.get(b"content-encoding", b"").strip().lower()
        if encoding in (b"gzip", b"deflate"):
            body, rewritten = self._decompress(body, encoding.decode()), True
        header_length = headers.get(binary.HEADER_LENGTH.encode())
        if header_length is not None:
            try:
                request = binary.request_to_json(body, header_length.decode("latin-1"))
            except binary.BadFraming as exc:
                raise _Refused(400, f"binary data extension: {exc}") from None
            body, rewritten = orjson.dumps(request), True  # as MLServer parses it: a few MB of base64 in ms
        elif b'"binary_data' in body:  # a JSON request may still ask for binary outputs
            try:
                request = json.loads(body)
            except ValueError:
                request = None  # MLServer answers malformed JSON itself
        wanted = binary.binary_outputs_wanted(request) if isinstance(request, dict) else None
        if rewritten or wanted:
            drop = {b"content-length", b"content-encoding", binary.HEADER_LENGTH.encode()}
            if wanted:
                drop.add(b"accept-encoding")  # the JSON answer is reframed here, so it must come uncompressed
            if rewritten:
                drop.add(b"content-type")
            kept = [(k, v) for k, v in scope["headers"] if k.lower() not in drop]
            if rewritten:
                kept.append((b"content-type", b"application/json"))
            scope = {**scope, "headers": kept + [(b"content-length", str(len(body)).encode())]}
        await self.app(scope, _replay(body, receive), _binary_answer(send, wanted) if wanted else send)

    async def _read(self, receive):
        """The whole body, counted against the limit as it arrives; None if the client went away."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_large(size)
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    def _decompress(self, body: bytes, encoding: str) -> bytes:
        """gzip or zlib ("deflate"), as tritonclient compresses; the limit applies to what it inflates to."""
        inflater = zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)  # either header, detected
        try:
            plain = inflater.decompress(body, self.max_bytes + 1)
        except zlib.error as exc:
            raise _Refused(400, f"Content-Encoding is {encoding} but the body does not inflate ({exc})") from None
        if len(plain) > self.max_bytes or inflater.unconsumed_tail:
            raise _Refused(413, f"request body inflates to more than the limit of {self.max_bytes:,} bytes")
        if not inflater.eof:
            raise _Refused(400, f"Content-Encoding is {encoding} but the compressed body is cut off")
        return plain

    def _too_large(self, size: int) -> _Refused:
        return _Refused(413, f"request body of {size:,} bytes is above the limit of {self.max_bytes:,} bytes "
                             f"(send fewer images per request, or a compact wire format)")


_HEALTH = re.compile(r"^/v2/(?:health/(live|ready)|models/([^/]+)(?:/versions/[^/]+)?/ready)/?$")


def _oip_answer(send, scope):
    """A `send` that gives MLServer's answers OIP's bodies: `{"error": ...}` on a failed request whose body lacks it
    (422 from request validation -> 400), JSON on an empty health answer. Other answers pass through untouched."""
    health = _HEALTH.match(scope.get("path", "")) if scope.get("method") in ("GET", "HEAD") else None
    start = None
    chunks = []

    async def send_oip(message):
        nonlocal start
        if message["type"] == "http.response.start":
            if message["status"] >= 400 or health:
                start = message  # held back until the body is known
                return
            return await send(message)
        if start is None or message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        status, body = start["status"], b"".join(chunks)
        content = _oip_body(status, _plain(body, start), health)
        if content is None:
            await send(start)
            return await send({"type": "http.response.body", "body": body})
        replaced = (b"content-length", b"content-type", b"content-encoding")
        kept = [(k, v) for k, v in start.get("headers", []) if k.lower() not in replaced]
        await answer_json(send, 400 if status == 422 else status, content, kept, head=scope.get("method") == "HEAD")

    return send_oip


def _plain(body: bytes, start) -> bytes:
    """The body as written before MLServer's GZipMiddleware compressed it (it does so above 500 bytes)."""
    encoding = dict((k.lower(), v) for k, v in start.get("headers", [])).get(b"content-encoding", b"")
    if encoding.strip().lower() not in (b"gzip", b"deflate"):
        return body
    try:
        return zlib.decompress(body, wbits=32 + zlib.MAX_WBITS)
    except zlib.error:
        return body


def _oip_body(status: int, body: bytes, health):
    """-> the OIP body for an answer, or None when MLServer's is already right."""
    if health and not body.strip():
        live, model = health.groups()
        if status >= 400:  # MLServer's "not ready" is an empty 400
            return {"error": f"model {unquote(model)} is not ready" if model else f"server is not {live}"}
        ok = 200 <= status < 300
        if model:
            return {"name": unquote(model), "ready": ok}
        return {"live": ok} if live == "live" else {"ready": ok}
    if status < 400:
        return None
    try:
        content = orjson.loads(body) if body.strip() else {}
    except ValueError:
        content = body.decode(errors="replace").strip()
    if isinstance(content, dict) and isinstance(content.get("error"), str):
        return None
    return {"error": _message(content.get("detail", content) if isinstance(content, dict) else content, status)}


def _message(detail, status: int) -> str:
    """One line from FastAPI's `detail`: a string, or pydantic's list of {loc, msg} for a request it could not parse."""
    if isinstance(detail, list):
        parts = []
        for item in detail[:5]:
            if isinstance(item, dict):
                where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
                parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "invalid request: " + "; ".join(parts)
    return str(detail) if detail not in ("", None, {}) else f"HTTP {status}"


def _replay(body: bytes, receive):
    """A `receive` that gives the app `body` once, then whatever the client sends next (its disconnect)."""
    replayed = False

    async def replay():
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def rewriting(send, rewrite):
    """A `send` that gathers the app's whole answer, then sends `rewrite(status, headers, body)` -> (headers, body)
    instead (for answers MLServer writes whole and small: metadata, infer)."""
    start, chunks = None, []

    async def send_rewritten(message):
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body" or start is None:
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        headers, body = rewrite(start["status"], list(start.get("headers", [])), b"".join(chunks))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return send_rewritten


def _binary_answer(send, wanted):
    """A `send` that turns MLServer's JSON answer into the binary extension's framing (errors stay JSON)."""

    def framed(status, headers, body):
        if status != 200:
            return headers, body
        try:  # MLServer wrote the answer with orjson
            body, header_length = binary.response_to_binary(orjson.loads(body), wanted)
        except (ValueError, KeyError, TypeError) as exc:  # a bug here must not cost the client its answer
            log.warning("could not frame the answer in binary, sending JSON: %s", exc)
            return headers, body
        drop = {b"content-length", b"content-type", binary.HEADER_LENGTH.encode()}
        return [(k, v) for k, v in headers if k.lower() not in drop] + [
            (b"content-type", b"application/octet-stream"), (b"content-length", str(len(body)).encode()),
            (binary.HEADER_LENGTH.encode(), str(header_length).encode())], body

    return rewriting(send, framed)


async def answer_json(send, status: int, content: dict, headers=(), head: bool = False):
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        *headers, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": b"" if head else body})
