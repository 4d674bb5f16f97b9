"""The ASGI layer in front of MLServer's REST app (shared/server/rest.py), in-process over httpx's ASGI transport:
the body limit for declared and streamed bodies, the body handed on intact, and the fail-closed start-up check."""
from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI, Request

from cassava.shared.errors import CassavaError
from cassava.shared.server import rest


def _echo_app(limit: int):
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request):
        body = await request.body()
        return {"bytes": len(body), "head": body[:8].decode(errors="replace")}

    return rest.BodySizeLimit(app, max_bytes=limit)


async def _post(app, content, headers=None):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.post("/echo", content=content, headers=headers)


def test_a_body_within_the_limit_reaches_the_app_intact():
    response = asyncio.run(_post(_echo_app(100), b"0123456789" * 10))
    assert response.status_code == 200 and response.json() == {"bytes": 100, "head": "01234567"}


def test_a_declared_body_above_the_limit_is_413_with_a_message():
    response = asyncio.run(_post(_echo_app(100), b"x" * 101))
    assert response.status_code == 413
    assert "request body of 101 bytes is above the limit of 100 bytes" in response.json()["error"]


def test_a_streamed_body_without_a_length_is_counted_as_it_arrives():
    async def chunks(count):
        for _ in range(count):
            yield b"y" * 40

    small = asyncio.run(_post(_echo_app(100), chunks(2)))
    assert small.status_code == 200 and small.json()["bytes"] == 80  # replayed to the app whole
    large = asyncio.run(_post(_echo_app(100), chunks(3)))
    assert large.status_code == 413


def test_mlservers_rest_app_gets_the_layer_and_the_check_passes():
    from mlserver.rest.server import RESTServer
    from mlserver.settings import Settings

    rest.install()
    server = RESTServer(Settings(), data_plane=None, model_repository_handlers=None)
    assert any(m.cls is rest.BodySizeLimit for m in server._app.user_middleware)
    rest.check_in_force()


def test_the_check_fails_closed_when_an_app_lacks_the_layer():
    from mlserver.rest.server import RESTServer

    server = RESTServer.__new__(RESTServer)  # as if MLServer had built its app some other way
    server._app = FastAPI()
    with pytest.raises(CassavaError, match="not in force"):
        rest.check_in_force()
    del server
    import gc

    gc.collect()  # no layer-less app left behind for later tests
