"""The decoded-pixel budget against real servers, both tiers, REST JSON, the binary extension and gRPC: images and
requests that declare too many pixels get 413 / RESOURCE_EXHAUSTED with the numbers before anything is decoded, large
images that are allowed are decoded within bounded memory, and the server keeps serving. RSS is read from /proc with
generous margins (the tight figures are benchmarks/bench_budget.py's).
"""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from cassava.shared.protocol.binary import frame, pack_elements
from cassava.shared.protocol.v2 import build_request
from cassava.testing import PeakRss, tree_rss_mb

from helpers import free_port, png_bomb, run_cli, running_tiers, still_serving, stop_process_group

pytestmark = pytest.mark.slow


def solid_png(width: int, height: int) -> bytes:
    """One colour: a 7000x7000 PNG is ~160 KB and decodes to 196 MB in Pillow."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (70, 140, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) says `width` x `height`."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


BOMB = solid_png(7000, 7000)
MID = solid_png(3000, 3000)  # 9 MP: 30 of them are 270 M pixels, above the 268,435,456 per request

# (case, photos, words the message must contain): every one refused from the headers, before decoding
REFUSED = [
    ("64 PNGs of 7000x7000", [BOMB] * 64, "3,136,000,000 pixels in all, above the limit of 268,435,456 pixels per "
                                          "request"),
    ("a PNG declaring 20000x20000", [png_bomb()], "20000x20000 = 400,000,000 pixels is above the limit of "
                                                   "67,108,864 pixels per image"),
    ("a JPEG declaring 60000x60000", [jpeg_declaring(60000, 60000)], "60000x60000 = 3,600,000,000 pixels is above"),
    ("30 mid-size PNGs of 3000x3000", [MID] * 30, "270,000,000 pixels in all"),
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory, standin_model):
    """Cloud and edge with the shipped settings, budget included, and the shipped 64 MiB body limit."""
    yield from running_tiers(tmp_path_factory, "budget")


@pytest.fixture(scope="module")
def images(standin_data):
    from cassava.shared.data import load_samples
    from cassava.shared.preprocess import preprocess

    return np.stack([preprocess(s.source, 224) for s in load_samples([str(standin_data)], 4)])


def post_json(server, photos) -> httpx.Response:
    body = {"inputs": [{"name": "photos", "datatype": "BYTES", "shape": [len(photos)],
                        "parameters": {"content_type": "base64"},
                        "data": [base64.b64encode(p).decode() for p in photos]}]}
    return httpx.post(f"{server.url}/v2/models/cassava/infer", content=json.dumps(body).encode(),
                      headers={"content-type": "application/json"}, timeout=300)


def post_binary(server, photos) -> httpx.Response:
    tensor = pack_elements(photos)
    header = {"inputs": [{"name": "photos", "datatype": "BYTES", "shape": [len(photos)],
                          "parameters": {"binary_data_size": len(tensor)}}]}
    body, header_length = frame(header, [tensor])
    return httpx.post(f"{server.url}/v2/models/cassava/infer", content=body,
                      headers={"Inference-Header-Content-Length": str(header_length)}, timeout=300)


def infer_grpc(server, photos):
    from mlserver.grpc import converters, dataplane_pb2_grpc

    request = build_request("photo", photos=photos, grpc=True)
    with grpc.insecure_channel(server.grpc_address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
        return stub.ModelInfer(converters.ModelInferRequestConverter.from_types(request, model_name="cassava"),
                               timeout=300)


def _message(reply: httpx.Response) -> str:
    return reply.json().get("error") or json.dumps(reply.json().get("detail"))


@pytest.mark.parametrize("tier", ["cloud", "edge"])
@pytest.mark.parametrize("transport", ["json", "binary", "grpc"])
@pytest.mark.parametrize("case, photos, words", REFUSED, ids=[c[0] for c in REFUSED])
def test_too_many_pixels_is_413_with_the_numbers_before_decoding(servers, images, tier, transport, case, photos,
                                                                 words):
    server = servers[tier]
    pid = server.process.pid
    with PeakRss(pid) as rss:
        before = tree_rss_mb(pid)
        started = time.monotonic()
        if transport == "grpc":
            with pytest.raises(grpc.RpcError) as caught:
                infer_grpc(server, photos)
            code, message = caught.value.code(), caught.value.details()
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{case}: {code} {message[:300]}"
        else:
            reply = (post_json if transport == "json" else post_binary)(server, photos)
            message = _message(reply)
            assert reply.status_code == 413, f"{case}: {reply.status_code} {reply.text[:300]}"
        took = time.monotonic() - started
    assert words in message, f"{case}: {message[:400]}"
    # Nothing was decoded: a single 7000x7000 decode alone takes ~1 s and 196 MB here.
    assert took < 10, f"{case}: refused after {took:.1f} s"
    assert rss.peak - before < 150, f"{case}: RSS {before:.0f} -> peak {rss.peak:.0f} MB"
    still_serving(server, images)


@pytest.mark.parametrize("tier", ["cloud", "edge"])
def test_large_images_within_the_limits_are_decoded_in_bounded_memory(servers, images, tier):
    """Four requests of three 7000x7000 PNGs at once (588 M pixels, 2.3 GB of Pillow buffers if all decoded
    together): the decode budget (64 Mi pixels) lets one through at a time, and the memory goes back afterwards."""
    server = servers[tier]
    pid = server.process.pid
    still_serving(server, images)
    steady = tree_rss_mb(pid)
    replies = [None] * 4
    calls = [lambda: post_json(server, [BOMB] * 3), lambda: post_binary(server, [BOMB] * 3),
             lambda: infer_grpc(server, [BOMB] * 3), lambda: post_json(server, [BOMB] * 3)]

    def call(index):
        try:
            replies[index] = calls[index]()
        except Exception as exc:  # noqa: BLE001 - asserted below
            replies[index] = exc

    with PeakRss(pid) as rss:
        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
    for reply in replies:
        assert not isinstance(reply, Exception), repr(reply)[:300]
        if isinstance(reply, httpx.Response):
            assert reply.status_code == 200, reply.text[:300]
            assert reply.json()["outputs"][0]["shape"] == [3]
    # One 49 M-pixel decode at a time is ~200 MB of Pillow buffers (plus request bodies); all twelve at once 2.3 GB.
    assert rss.peak - steady < 700, f"RSS {steady:.0f} -> peak {rss.peak:.0f} MB"
    still_serving(server, images)
    after = tree_rss_mb(pid)
    assert after - steady < 100, f"RSS {steady:.0f} MB before, {after:.0f} MB after"


def test_serve_flags_set_the_limits(tmp_path, standin_int8):
    """`cassava serve edge --max-image-pixels N`: a photo above N gets 413 naming N; a bad combination is one line."""
    bad = run_cli("serve", "edge", "--model", "/nonexistent.tflite", "--max-image-pixels", "1000",
                  "--max-decoding-pixels", "10", "--http-port", free_port(), "--grpc-port", free_port(),
                  "--metrics-port", free_port(), timeout=120)
    assert bad.returncode == 2 and "max_decoding_pixels (10) must be at least max_image_pixels (1,000)" in bad.stderr
    model = standin_int8
    port = free_port()
    command = [str(Path(sys.executable).parent / "cassava"), "serve", "edge", "--model", str(model),
               "--http-port", str(port), "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
               "--max-image-pixels", "1000000", "--max-decoding-pixels", "2000000"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True, env=os.environ.copy())
    try:
        from helpers import wait_ready

        wait_ready(f"http://127.0.0.1:{port}/v2/models/cassava/ready", 180, process)

        class Server:
            url = f"http://127.0.0.1:{port}"

        reply = post_json(Server, [solid_png(1200, 1000)])
        assert reply.status_code == 413 and "1,200,000 pixels is above the limit of 1,000,000" in _message(reply)
        assert post_json(Server, [solid_png(1000, 1000)]).status_code == 200
    finally:
        stop_process_group(process)


@pytest.fixture(scope="module")
def oversized_folder(tmp_path_factory, real_photos):
    """One real photo and a PNG declaring 20000x20000 (400 M pixels, 66 bytes)."""
    folder = tmp_path_factory.mktemp("oversized")
    photo = sorted(real_photos.glob("*/*.jpg"))[0]
    (folder / photo.name).write_bytes(photo.read_bytes())
    (folder / "huge.png").write_bytes(png_bomb())
    return folder


LIMIT_WORDS = "huge.png: 20000x20000 = 400,000,000 pixels is above the limit of 67,108,864 pixels per image"


def test_predict_reports_an_oversized_file_in_one_line_and_classifies_the_rest(tmp_path, oversized_folder,
                                                                              standin_int8):
    model = standin_int8 / "model.tflite"
    files = sorted(oversized_folder.iterdir())
    result = run_cli("predict", "--model", model, "--data", *files, "--json", tmp_path / "out.json", "--quiet",
                     timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "huge.png" in line]
    assert len(lines) == 1 and LIMIT_WORDS in lines[0], result.stderr[-2000:]
    records = {Path(r["file"]).name: r for r in json.loads((tmp_path / "out.json").read_text())}
    assert LIMIT_WORDS in records["huge.png"]["error"] and records["huge.png"]["prediction"] is None
    assert sum(r["prediction"] is not None for r in records.values()) == 1


def test_watch_records_an_oversized_file_as_failed(tmp_path, oversized_folder, standin_int8):
    model = standin_int8 / "model.tflite"
    out = tmp_path / "results.jsonl"
    result = run_cli("watch", "--model", model, "--source", oversized_folder, "--out", out, "--every", "100ms",
                     "--max-images", "2", "--duration", "120", timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    records = {r["file"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert LIMIT_WORDS in records["huge.png"]["error"] and "top" not in records["huge.png"]
    assert len(records) == 2 and "top" in next(r for name, r in records.items() if name != "huge.png")
