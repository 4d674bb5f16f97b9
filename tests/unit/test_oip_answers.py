"""The REST layer's OIP answers (shared/server/rest.py `_oip_answer`), in process over httpx's ASGI transport, on a
FastAPI app built as MLServer builds its own (GZip middleware inside the layer): error bodies become OIP's error
object whatever the app said, FastAPI's 422 becomes 400, gzipped error bodies are read and answered plain, health
answers get OIP's bodies, and everything else passes untouched."""
from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from cassava.shared.server import rest


class Body(BaseModel):
    inputs: list


def _app():
    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, body: Body):
        if name == "long":
            return JSONResponse({"detail": "x" * 2000}, status_code=400)
        return {"model_name": name, "outputs": []}

    @app.get("/v2/health/live")
    async def live():
        return Response(status_code=200)

    @app.get("/v2/models/{name}/ready")
    async def ready(name: str):
        return Response(status_code=400 if name == "loading" else 200)  # MLServer's "not ready"

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def version_ready(name: str, version: str):
        return Response(status_code=200)

    app.add_middleware(GZipMiddleware)
    return rest.RestLayer(app, max_bytes=1_000_000)


def _call(method, path, **kwargs) -> httpx.Response:
    async def call():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(call())


def test_request_validation_422_is_oip_400_with_an_error_object():
    reply = _call("POST", "/v2/models/m/infer", content=b"[1]", headers={"content-type": "application/json"})
    assert reply.status_code == 400 and list(reply.json()) == ["error"]
    assert reply.json()["error"].startswith("invalid request: ")


def test_missing_field_is_named_in_one_line():
    reply = _call("POST", "/v2/models/m/infer", json={"id": "1"})
    assert reply.status_code == 400 and reply.json() == {"error": "invalid request: inputs: Field required"}


def test_405_and_404_keep_their_codes_and_headers():
    reply = _call("GET", "/v2/models/m/infer")
    assert (reply.status_code, reply.json(), reply.headers["allow"]) == (405, {"error": "Method Not Allowed"}, "POST")
    reply = _call("GET", "/nowhere")
    assert (reply.status_code, reply.json()) == (404, {"error": "Not Found"})


def test_a_gzipped_error_body_is_read_and_answered_plain():
    reply = _call("POST", "/v2/models/long/infer", json={"inputs": []}, headers={"accept-encoding": "gzip"})
    assert reply.status_code == 400 and "content-encoding" not in reply.headers
    assert reply.json() == {"error": "x" * 2000}


def test_health_answers_get_oip_bodies():
    assert _call("GET", "/v2/health/live").json() == {"live": True}
    assert _call("GET", "/v2/models/my%20model/ready").json() == {"name": "my model", "ready": True}
    assert _call("GET", "/v2/models/m/versions/3/ready").json() == {"name": "m", "ready": True}
    not_ready = _call("GET", "/v2/models/loading/ready")
    assert (not_ready.status_code, not_ready.json()) == (400, {"error": "model loading is not ready"})


def test_a_good_answer_passes_untouched():
    reply = _call("POST", "/v2/models/m/infer", json={"inputs": []})
    assert reply.status_code == 200 and reply.json() == {"model_name": "m", "outputs": []}
