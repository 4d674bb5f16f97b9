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

from . import rest

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

    def listed(status, headers, body):
        try:
            metadata = json.loads(body) if status == 200 else None
        except ValueError:
            metadata = None
        if not (isinstance(metadata, dict) and isinstance(metadata.get("extensions"), list)):
            return headers, body
        if EXTENSION not in metadata["extensions"]:
            metadata["extensions"].append(EXTENSION)
        body = json.dumps(metadata).encode()
        return [(k, v) for k, v in headers if k.lower() != b"content-length"] + [
            (b"content-length", str(len(body)).encode())], body

    return rest.rewriting(send, listed)


async def _answer(send, status: int, content: dict, scope):
    await rest.answer_json(send, status, content, headers=[(b"cache-control", b"no-store")],
                           head=scope.get("method") == "HEAD")
