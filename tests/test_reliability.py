"""Reliability against real servers, both tiers: bad input gets a 4xx that says what was wrong and the server keeps
serving; 8 concurrent clients x 100 requests get exactly the answers each image gets alone.
"""
from __future__ import annotations

import base64
import io
import json
import struct
import threading
from typing import NamedTuple, Optional

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from cassava.shared.data import load_samples
from cassava.shared.preprocess import preprocess
from cassava.shared.protocol.v2 import build_request

from helpers import REPO, LoopbackServer, infer_request, png_bomb, running_tiers, still_serving

pytestmark = pytest.mark.slow
BODY_LIMIT = 4_000_000  # small for the test: three images as float JSON (~6 MB) are over it


def _png(width=8, height=8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()[:600]  # header intact, scan data cut off


def _photos_input(photos, name="photos"):
    return {"name": name, "datatype": "BYTES", "shape": [len(photos)], "parameters": {"content_type": "base64"},
            "data": [base64.b64encode(p).decode() for p in photos]}


def _tensor(name, datatype, shape, data):
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


ZEROS = [0] * (224 * 224 * 3)


class Framed(NamedTuple):
    """A body in the binary data extension: JSON header, then `tail`; `header_length` as sent (default: true)."""
    header: dict
    tail: bytes = b""
    header_length: Optional[str] = None


def _binary_input(name, datatype, shape, size):
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}}]}


PIXELS_1 = _binary_input("pixels", "UINT8", [1, 224, 224, 3], 224 * 224 * 3)

# (case, JSON body or raw bytes, model name, expected status, words the message must contain)
BAD_REQUESTS = [
    ("wrong rank", {"inputs": [_tensor("pixels", "UINT8", [224, 224, 3], ZEROS)]}, "cassava", 400, "rank 4"),
    ("wrong image size (UINT8)", {"inputs": [_tensor("pixels", "UINT8", [1, 100, 100, 3], [0] * 30000)]},
     "cassava", 400, "[224, 224, 3]"),
    ("wrong image size (FP32)", {"inputs": [_tensor("payload", "FP32", [1, 32, 32, 3], [0.0] * 3072)]},
     "cassava", 400, "[224, 224, 3]"),
    ("wrong datatype", {"inputs": [_tensor("payload", "INT32", [1, 224, 224, 3], ZEROS)]}, "cassava", 400, "datatype"),
    # JSON has no NaN; gRPC test below
    ("NaN floats", b'{"inputs":[{"name":"payload","datatype":"FP32","shape":[1,224,224,3],"data":[NaN'
     + b",0.0" * (224 * 224 * 3 - 1) + b"]}]}", "cassava", 400, "JSON decode error"),
    ("values outside the pixel range",
     {"inputs": [_tensor("payload", "FP32", [1, 224, 224, 3], [1.5] * (224 * 224 * 3))]},
     "cassava", 400, "outside [0, 1]"),
    ("empty batch", {"inputs": [_tensor("pixels", "UINT8", [0, 224, 224, 3], [])]}, "cassava", 400, "empty batch"),
    ("batch above the limit", {"inputs": [_photos_input([_png()] * 65)]}, "cassava", 413, "limit of 64"),
    ("corrupt JPEG", {"inputs": [_photos_input([_truncated_jpeg()])]}, "cassava", 400, "corrupt"),
    ("non-image bytes", {"inputs": [_photos_input([b"%PDF-1.4 this is a document"])]}, "cassava", 400, "not an image"),
    ("decompression bomb", {"inputs": [_photos_input([png_bomb()])]}, "cassava", 413, "pixels per image"),
    ("body above the limit",
     {"inputs": [_tensor("payload", "FP32", [3, 224, 224, 3], [0.123456789] * (3 * 224 * 224 * 3))]},
     "cassava", 413, "above the limit"),
    ("unknown input name", {"inputs": [_tensor("image", "UINT8", [1, 224, 224, 3], ZEROS)]},
     "cassava", 400, "unknown input"),
    ("unknown model name", {"inputs": [_tensor("pixels", "UINT8", [1, 224, 224, 3], ZEROS)]}, "rice", 404, "rice"),
    ("malformed JSON", b'{"inputs": [{"name": "pixels", "datatype": ', "cassava", 400, "JSON decode error"),
    # the binary data extension (tritonclient.http's default): framing faults are 400s from the REST layer
    ("binary: header length beyond the body", Framed(PIXELS_1, bytes(224 * 224 * 3), "9999999"), "cassava", 400,
     "but the body has only"),
    ("binary: non-numeric header length", Framed(PIXELS_1, bytes(224 * 224 * 3), "0x1f"), "cassava", 400,
     "must be a non-negative integer"),
    ("binary: truncated tensor", Framed(PIXELS_1, bytes(1000)), "cassava", 400, "truncated tensor"),
    ("binary: sizes that do not add up", Framed(PIXELS_1, bytes(224 * 224 * 3 + 7)), "cassava", 400,
     "7 bytes beyond the JSON header"),
    ("binary: size not matching the shape", Framed(_binary_input("pixels", "UINT8", [1, 224, 224, 3], 1000),
                                                   bytes(1000)), "cassava", 400, "takes 150,528"),
    ("binary: truncated BYTES element", Framed(_binary_input("photos", "BYTES", [1], 104),
                                               struct.pack("<I", 5000) + bytes(100)),
     "cassava", 400, "declares 5,000 bytes but only 100 remain"),
    ("binary: non-image bytes", Framed(_binary_input("photos", "BYTES", [1], 31),
                                       struct.pack("<I", 27) + b"%PDF-1.4 this is a document"),
     "cassava", 400, "not an image"),
    ("binary: NaN floats", Framed(_binary_input("payload", "FP32", [1, 224, 224, 3], 224 * 224 * 3 * 4),
                                  np.full(224 * 224 * 3, np.nan, np.float32).tobytes()), "cassava", 400, "NaN"),
    ("binary: body above the limit", Framed(_binary_input("pixels", "UINT8", [27, 224, 224, 3], 27 * 224 * 224 * 3),
                                            bytes(27 * 224 * 224 * 3)), "cassava", 413, "request body of 4,06"),
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory, standin_model):
    yield from running_tiers(tmp_path_factory, "reliability", {"CASSAVA_MAX_REQUEST_BYTES": str(BODY_LIMIT)})


@pytest.fixture(scope="module")
def images(standin_data):
    samples = load_samples([str(standin_data)], 16)
    return np.stack([preprocess(s.source, 224) for s in samples])


def _post(server, body, model="cassava") -> httpx.Response:
    headers = {"content-type": "application/json"}
    if isinstance(body, Framed):
        head = json.dumps(body.header).encode()
        content = head + body.tail
        headers = {"Inference-Header-Content-Length": body.header_length or str(len(head))}
    else:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=content, headers=headers, timeout=60)


@pytest.mark.parametrize("tier", ["cloud", "edge"])
@pytest.mark.parametrize("case, body, model, status, words", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_a_clear_4xx_and_the_server_keeps_serving(servers, images, tier, case, body, model, status,
                                                                   words):
    server = servers[tier]
    reply = _post(server, body, model)
    assert reply.status_code == status, f"{case}: {reply.status_code} {reply.text[:300]}"
    message = reply.json()["error"]  # OIP's error object, whoever refused the request (rest.py's _oip_answer)
    assert message and words in message, f"{case}: {message[:300]}"
    still_serving(server, images)


@pytest.mark.parametrize("tier", ["cloud", "edge"])
def test_grpc_bad_requests_get_status_codes(servers, images, tier):
    from mlserver.grpc import converters, dataplane_pb2_grpc

    server = servers[tier]
    cases = [
        (build_request("uint8", pixels=np.zeros((1, 100, 100, 3), np.uint8)), "cassava",
         grpc.StatusCode.INVALID_ARGUMENT, "[224, 224, 3]"),
        (build_request("photo", photos=[b"not an image"], grpc=True), "cassava",
         grpc.StatusCode.INVALID_ARGUMENT, "not an image"),
        (build_request("photo", photos=[_png()] * 65, grpc=True), "cassava",
         grpc.StatusCode.RESOURCE_EXHAUSTED, "limit"),
        (build_request("uint8", pixels=images[:1]), "rice", grpc.StatusCode.NOT_FOUND, "rice"),
    ]
    nan = build_request("float32", pixels=images[:1])
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
        message = converters.ModelInferRequestConverter.from_types(nan, model_name="cassava")
        message.inputs[0].contents.fp32_contents[7] = float("nan")
        cases_pb = [(message, grpc.StatusCode.INVALID_ARGUMENT, "NaN")]
        cases_pb += [(converters.ModelInferRequestConverter.from_types(r, model_name=m), code, words)
                     for r, m, code, words in cases]
        for request, code, words in cases_pb:
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(request, timeout=60)
            assert caught.value.code() == code and words in caught.value.details(), caught.value.details()
    still_serving(server, images)


@pytest.mark.parametrize("tier", ["cloud", "edge"])
def test_eight_clients_times_100_requests_get_the_answers_sent_alone(servers, images, tier):
    server = servers[tier]
    with httpx.Client() as client:  # each image alone, one at a time: the reference answers
        alone = [infer_request(server, client, build_request("uint8", pixels=images[i:i + 1]))[1][0]
                 for i in range(len(images))]
    errors, mismatches = [], []

    def client_thread(seed: int):
        rng = np.random.default_rng(seed)
        with httpx.Client() as client:
            for _ in range(100):
                index = int(rng.integers(len(images)))
                wire = ("uint8", "compact")[int(rng.integers(2))]
                try:
                    request = build_request(wire, pixels=images[index:index + 1])
                    class_ids, probabilities, _ = infer_request(server, client, request)
                except Exception as exc:  # noqa: BLE001 - counted and reported below
                    errors.append(repr(exc)[:200])
                    continue
                if class_ids[0] != alone[index].argmax() or not np.allclose(probabilities[0], alone[index], atol=1e-5):
                    mismatches.append((seed, index))

    threads = [threading.Thread(target=client_thread, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert not any(t.is_alive() for t in threads), "clients still running after 10 minutes"
    assert errors == [] and mismatches == []
    metrics = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30).text
    batched = [line for line in metrics.splitlines() if line.startswith("cassava_batch_images_count")]
    assert batched, "the runtime's batch histogram is missing"


def test_model_folders_cannot_bring_their_own_code(tmp_path, standin_model):
    """A model-settings.json dropped inside the served folder names foreign code: MLServer would import it."""
    settings = json.loads((REPO / "cloud" / "model-settings.json").read_text())
    settings["parameters"]["uri"] = "standin"
    server = LoopbackServer.mlserver(tmp_path / "served", settings)
    evil = server.workdir / "evil"
    evil.mkdir()
    marker = tmp_path / "evil-code-ran"
    (evil / "evil_runtime.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from mlserver import MLModel\nclass Runtime(MLModel):\n    async def load(self):\n        return True\n")
    (evil / "model-settings.json").write_text(json.dumps({"name": "evil", "implementation": "evil_runtime.Runtime"}))
    with server:
        assert httpx.get(f"{server.url}/v2/models/evil/ready", timeout=30).status_code == 404
        assert httpx.get(f"{server.url}/v2/models/cassava/ready", timeout=30).status_code == 200
    assert not marker.exists()
    assert "Refusing model 'evil'" in server.log()
