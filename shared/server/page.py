"""`GET /` on a tier's REST port: one self-contained page through which a phone takes a photo and asks the model.

The page (static/index.html) has its CSS and JavaScript inline and asks nothing of any other origin, so it works on
a farm network with no internet. It is served with a Content-Security-Policy that allows its own origin only; its
inline `<script>` and `<style>` are allowed by their SHA-256 hashes, computed here when the page is read.

`CASSAVA_PAGE=off` (which `cassava serve --no-page` sets) leaves the REST port API-only: `GET /` is then MLServer's
own 404. Only `GET`/`HEAD` of `/` (and of `/favicon.ico`: 204, there is none) is answered here; every other request
goes on to the API unchanged.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

from ..labels import DISPLAY_NAMES, plain_name

PAGE_ENV = "CASSAVA_PAGE"
PAGE_FILE = Path(__file__).parent / "static" / "index.html"
OFF = ("0", "off", "false", "no")
NAMES_BLOCK = '<script type="application/json" id="class-names">{}</script>'


def enabled() -> bool:
    return os.environ.get(PAGE_ENV, "on").strip().lower() not in OFF


def _hashes(html: str, tag: str) -> str:
    """The CSP source list allowing each inline `<tag>` block of `html`, by the SHA-256 of its exact text."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


def content_security_policy(html: str) -> str:
    return "; ".join([
        "default-src 'self'",
        f"script-src {_hashes(html, 'script')}",
        f"style-src {_hashes(html, 'style')}",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])


def with_class_names(html: str) -> str:
    """The page with the plain-language class names from shared/labels.py (one list for the CLI and the page).
    A JSON data block is not script, so the CSP hashes (of the `<script>` blocks only) are unaffected."""
    names = json.dumps({name: plain_name(name) for name in DISPLAY_NAMES}).replace("</", "<\\/")
    return html.replace(NAMES_BLOCK, NAMES_BLOCK.replace("{}", names), 1)


class PageLayer:
    """ASGI middleware: answers `GET /` with the page; everything else passes through."""

    def __init__(self, app, page: Path = PAGE_FILE):
        self.app = app
        html = with_class_names(page.read_text(encoding="utf-8"))
        self.body = html.encode("utf-8")
        self.headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(self.body)).encode()),
            (b"content-security-policy", content_security_policy(html).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"cache-control", b"no-cache"),  # a new version of the page reaches phones on the next visit
        ]

    async def __call__(self, scope, receive, send):
        path = scope.get("path") if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") else None
        if path == "/favicon.ico":  # browsers ask for it with every page: no icon, and no 404 in their console
            await send({"type": "http.response.start", "status": 204, "headers": []})
            return await send({"type": "http.response.body", "body": b""})
        if path != "/":
            return await self.app(scope, receive, send)
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else self.body})
