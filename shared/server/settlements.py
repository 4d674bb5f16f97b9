"""The settlement extension on REST: what the cloud answered for an image the edge answered provisionally.

    GET /v2/models/{name}/settlements/{id}

`id` is one of the response's `settlement_ids` (a parameter of an escalating edge's answer: comma-separated, one per
image, empty where the edge answered alone). 200: the record (edge/settlement.py), whose `status` is `pending`
(queued; the edge's answer stands for now), `settled` (`prediction`, `probability`, `probabilities` and
`answered_by: cloud` are the cloud's answer; `edge` keeps the edge's) or `provisional` (the cloud will not settle
it; `reason` says why). An unknown or expired id, or a model that does not escalate, is 404 with OIP's error object.
While some model serves settlements, `GET /v2` lists the extension as `settlements`.

A model registers its lookup when it loads (in the server process; with MLServer's parallel workers the model lives
in a worker and this answers 404). Ids are unguessable tokens, so knowing one is the permission to read it.
"""
from __future__ import annotations

import json
import re
from typing import Callable, Dict, Optional

EXTENSION = "settlements"
_PATH = re.compile(r"^/v2/models/([^/]+)/settlements/([^/]+)/?$")
_LOOKUPS: Dict[str, Callable[[str], Optional[dict]]] = {}


def register(model_name: str, lookup: Callable[[str], Optional[dict]]) -> None:
    _LOOKUPS[model_name] = lookup


def unregister(model_name: str) -> None:
    _LOOKUPS.pop(model_name, None)


class SettlementLayer:
    """ASGI middleware: answers the settlement path; adds the extension to `GET /v2`; passes everything else on."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        match = _PATH.match(path)
        if match:
            return await self._settlement(scope, send, *match.groups())
        if path.rstrip("/") == "/v2" and _LOOKUPS:
            return await self.app(scope, receive, _listing_extension(send))
        return await self.app(scope, receive, send)

    async def _settlement(self, scope, send, model: str, settlement_id: str):
        lookup = _LOOKUPS.get(model)
        record = lookup(settlement_id) if lookup else None
        if record is None:
            message = (f"no settlement {settlement_id!r} for model {model!r} (unknown or expired)" if lookup
                       else f"model {model!r} does not escalate to a cloud: it has no settlements")
            return await _answer(send, 404, {"error": message}, scope)
        record = {k: v for k, v in record.items() if k != "queued_s"}
        await _answer(send, 200, record, scope)


def _listing_extension(send):
    """A `send` that adds EXTENSION to the server metadata's `extensions` (MLServer writes it uncompressed: small)."""
    start, chunks = None, []

    async def send_listed(message):
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body" or start is None:
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body, headers = b"".join(chunks), list(start.get("headers", []))
        try:
            metadata = json.loads(body) if start["status"] == 200 else None
        except ValueError:
            metadata = None
        if isinstance(metadata, dict) and isinstance(metadata.get("extensions"), list):
            if EXTENSION not in metadata["extensions"]:
                metadata["extensions"].append(EXTENSION)
            body = json.dumps(metadata).encode()
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return send_listed


async def _answer(send, status: int, content: dict, scope):
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})
