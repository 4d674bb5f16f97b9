"""The ASGI layer in front of MLServer's REST app (shared/server/rest.py), in-process over httpx's ASGI transport:
the body limit for declared and streamed bodies, the body handed on intact, the fail-closed start-up check, and the
binary data extension (framed requests handed on as JSON, framed answers when asked, 400 for bad framing)."""
from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cassava.shared.errors import CassavaError
from cassava.shared.server import compat, rest


def _echo_app(limit: int):
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request):
        body = await request.body()
        return {"bytes": len(body), "head": body[:8].decode(errors="replace")}

    return rest.RestLayer(app, max_bytes=limit)


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

    compat.apply()
    server = RESTServer(Settings(), data_plane=None, model_repository_handlers=None)
    assert any(m.cls is rest.RestLayer for m in server._app.user_middleware)
    compat.check_in_force()


def test_the_check_fails_closed_when_an_app_lacks_the_layer():
    from mlserver.rest.server import RESTServer
    from mlserver.settings import Settings

    compat.apply()
    server = RESTServer(Settings(), data_plane=None, model_repository_handlers=None)
    server._app = FastAPI()  # as if MLServer had built its app some other way
    with pytest.raises(CassavaError, match="not in force"):
        compat.check_in_force()
    del server
    import gc

    gc.collect()  # no layer-less app left behind for later tests


def test_a_data_plane_without_a_rest_server_fails_closed():
    from mlserver.handlers.dataplane import DataPlane
    from mlserver.registry import MultiModelRegistry
    from mlserver.settings import Settings

    compat.apply()
    plane = DataPlane(Settings(), MultiModelRegistry())  # MLServer's data plane, with no REST server made beside it
    with pytest.raises(CassavaError, match="a REST server built with the layers"):
        compat.check_in_force()
    del plane
    import gc

    gc.collect()


# ---------------------------------------------------------------- the binary data extension on infer requests


def _v2_app(limit: int = 10_000, status: int = 200):
    """An app on MLServer's infer route that records what reached it and answers a small V2 response."""
    app, seen = FastAPI(), []

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request):
        body = await request.body()
        seen.append({"headers": dict(request.headers), "body": body})
        if status != 200:
            return JSONResponse({"error": "model says no"}, status_code=status)
        return {"model_name": name, "outputs": [
            {"name": "class_ids", "datatype": "INT64", "shape": [2], "data": [4, 1]},
            {"name": "labels", "datatype": "BYTES", "shape": [2], "data": ["healthy", "cbsd"]}]}

    return rest.RestLayer(app, max_bytes=limit), seen


def _framed_pixels(values: bytes = bytes(range(12)), **parameters):
    header = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 2, 2, 3],
                          "parameters": {"binary_data_size": len(values)}}], "parameters": parameters}
    head = json.dumps(header).encode()
    return head + values, {"Inference-Header-Content-Length": str(len(head))}


async def _infer(app, content, headers=None):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.post("/v2/models/cassava/infer", content=content, headers=headers)


def test_a_binary_request_reaches_mlserver_as_json_and_the_answer_stays_json_unless_asked():
    app, seen = _v2_app()
    body, headers = _framed_pixels()
    response = asyncio.run(_infer(app, body, {**headers, "content-type": "application/octet-stream"}))
    assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [4, 1]
    assert "inference-header-content-length" not in response.headers
    forwarded = json.loads(seen[0]["body"])
    assert forwarded["inputs"][0]["parameters"] == {"content_type": "base64"}
    assert base64.b64decode(forwarded["inputs"][0]["data"]) == bytes(range(12))
    assert seen[0]["headers"]["content-type"] == "application/json"
    assert int(seen[0]["headers"]["content-length"]) == len(seen[0]["body"])
    assert "inference-header-content-length" not in seen[0]["headers"]


def test_binary_outputs_when_asked_are_framed_as_tritonclient_reads_them():
    import tritonclient.http as triton

    app, _ = _v2_app()
    body, headers = _framed_pixels(binary_data_output=True)
    response = asyncio.run(_infer(app, body, headers))
    header_length = int(response.headers["inference-header-content-length"])
    result = triton.InferResult.from_response_body(response.content, header_length=header_length)
    assert result.as_numpy("class_ids").tolist() == [4, 1]
    assert result.as_numpy("labels").tolist() == [b"healthy", b"cbsd"]
    assert int(response.headers["content-length"]) == len(response.content)


def test_a_json_request_asking_for_binary_outputs_gets_them_and_other_json_passes_untouched():
    app, seen = _v2_app()
    plain = json.dumps({"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1], "data": [1]}]}).encode()
    assert asyncio.run(_infer(app, plain)).json()["outputs"][1]["data"] == ["healthy", "cbsd"]
    assert seen[0]["body"] == plain  # byte for byte
    asking = json.dumps({"inputs": [], "outputs": [{"name": "labels", "parameters": {"binary_data": True}}]}).encode()
    response = asyncio.run(_infer(app, asking))
    header = json.loads(response.content[:int(response.headers["inference-header-content-length"])])
    assert header["outputs"][0]["data"] == [4, 1] and header["outputs"][1]["parameters"]["binary_data_size"] == 19


def test_errors_stay_json_when_binary_was_asked():
    app, _ = _v2_app(status=400)
    body, headers = _framed_pixels(binary_data_output=True)
    response = asyncio.run(_infer(app, body, headers))
    assert response.status_code == 400 and response.json() == {"error": "model says no"}


@pytest.mark.parametrize("header_length, words", [("99999", "but the body has only"), ("x12", "non-negative integer")])
def test_malformed_framing_is_400_and_never_reaches_mlserver(header_length, words):
    app, seen = _v2_app()
    body, _ = _framed_pixels()
    response = asyncio.run(_infer(app, body, {"Inference-Header-Content-Length": header_length}))
    assert response.status_code == 400 and words in response.json()["error"] and not seen
    truncated, headers = _framed_pixels()
    response = asyncio.run(_infer(app, truncated[:-5], headers))
    assert response.status_code == 400 and "truncated tensor" in response.json()["error"]
    assert asyncio.run(_infer(app, *_framed_pixels())).status_code == 200  # and the next one is served


def test_the_limit_counts_the_whole_binary_body():
    app, seen = _v2_app(limit=200)
    body, headers = _framed_pixels(values=bytes(300))  # a small JSON header, a large tensor after it
    response = asyncio.run(_infer(app, body, headers))
    assert response.status_code == 413 and "above the limit of 200 bytes" in response.json()["error"] and not seen


def test_compressed_binary_bodies_are_inflated_within_the_limit():
    import gzip
    import zlib

    app, seen = _v2_app(limit=2_000)
    body, headers = _framed_pixels(values=bytes(range(12)))
    for encoding, compress in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        response = asyncio.run(_infer(app, compress(body), {**headers, "Content-Encoding": encoding}))
        assert response.status_code == 200
        assert base64.b64decode(json.loads(seen[-1]["body"])["inputs"][0]["data"]) == bytes(range(12))
        assert "content-encoding" not in seen[-1]["headers"]
    bomb = gzip.compress(b"{" + b" " * 1_000_000 + b"}")  # ~1 KB that inflates to 1 MB
    response = asyncio.run(_infer(app, bomb, {"Content-Encoding": "gzip"}))
    assert response.status_code == 413 and "inflates to more than the limit" in response.json()["error"]
    response = asyncio.run(_infer(app, b"not gzip", {"Content-Encoding": "gzip"}))
    assert response.status_code == 400 and "does not inflate" in response.json()["error"]
