"""The cloud tier: real `mlserver start` processes on copies of the shipped cloud/ settings, over REST and gRPC.

Every server answer is checked against the same model run in this process. The stand-in (stand-in model,
synthetic data) runs everywhere; the third-party 256-px raw-pixel model runs when ../shared is present.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import threading
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from helpers import REAL_CLASSES, REPO, LoopbackServer, shipped_cloud

pytestmark = pytest.mark.slow

CLOUD = REPO / "cloud"
KINDS = {"payload": "float32", "pixels": "uint8", "photos": "photo", "compact": "compact"}  # input kind -> wire


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, standin_model):
    """`mlserver start` on a copy of the whole cloud/ folder (its .py files land on sys.path too, as with
    `mlserver start cloud/`), only the uri and ports changed."""
    workdir = tmp_path_factory.mktemp("cloud") / "cloud"
    shutil.copytree(CLOUD, workdir, ignore=shutil.ignore_patterns("__pycache__"))
    server = LoopbackServer.mlserver(workdir, *shipped_cloud("standin")).start(timeout=300)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def standin_reference(standin_model):
    from cassava.cloud.model import load_tf_classifier

    return load_tf_classifier("standin")


@pytest.fixture(scope="module")
def real_reference(real_model):
    from cassava.cloud.model import load_tf_classifier

    return load_tf_classifier(str(real_model), input_scale=255, classes=REAL_CLASSES)


def _images(data, size: int, n=None):
    """(samples, uint8 pixels [N, size, size, 3] by the shared preprocessing, the photo files' bytes)."""
    from cassava.shared.data import load_samples
    from cassava.shared.preprocess import preprocess

    samples = load_samples(data, n)
    photos = [Path(s.source).read_bytes() for s in samples]
    return samples, np.stack([preprocess(p, size) for p in photos]), photos


def _transport(server: LoopbackServer, over_grpc: bool):
    from cassava.shared.protocol.transport import GrpcTransport, HttpTransport

    if over_grpc:
        return GrpcTransport(server.grpc_address, timeout=120, retries=0)
    return HttpTransport(server.url, timeout=120, retries=0)


def _infer(server: LoopbackServer, kind: str, pixels, photos, scale: float, over_grpc: bool):
    from cassava.shared.protocol.v2 import build_request, decode_response

    request = build_request(KINDS[kind], pixels=pixels, photos=photos, input_scale=scale, grpc=over_grpc)
    transport = _transport(server, over_grpc)
    try:
        return decode_response(transport.infer(request))
    finally:
        transport.close()


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (40, 120, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _metrics(server: LoopbackServer) -> str:
    return httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text


def _metric(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 when there are none)."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


# ---------------------------------------------------------------------------------------------- the shipped settings


def test_shipped_settings_serve_as_is():
    """`mlserver start cloud/` needs nothing else: the runtime is importable and the limits fit the batches."""
    model_settings = json.loads((CLOUD / "model-settings.json").read_text())
    settings = json.loads((CLOUD / "settings.json").read_text())
    from cassava.shared.spec import CROPNET_HANDLE

    assert model_settings["name"] == "cassava" and model_settings["parameters"]["uri"] == CROPNET_HANDLE
    module, _, name = model_settings["implementation"].rpartition(".")
    assert getattr(__import__(module, fromlist=[name]), name).tier == "cloud"
    assert model_settings["parameters"]["extra"]["max_batch_images"] > 1  # batching is on by default
    assert (settings["http_port"], settings["grpc_port"], settings["metrics_port"]) == (8080, 8081, 8082)
    assert settings["host"] == "127.0.0.1" and "parallel_workers" in settings
    # 16 float images of the largest model here (256 px), as gRPC fp32 contents, with room to spare
    assert settings["grpc_max_message_length"] >= 2 * 16 * 256 * 256 * 3 * 4


def test_metadata_declares_the_three_inputs_and_three_outputs(cloud):
    metadata = httpx.get(f"{cloud.url}/v2/models/cassava", timeout=30).json()
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
        ("payload", "FP32", [-1, 224, 224, 3]), ("pixels", "UINT8", [-1, 224, 224, 3]), ("photos", "BYTES", [-1])]
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
        ("class_ids", "INT64", [-1]), ("probabilities", "FP32", [-1, 6]), ("labels", "BYTES", [-1])]
    assert "Traceback" not in cloud.log()


def test_health_readiness_and_metrics_endpoints_answer(cloud):
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/cassava/ready"):
        assert httpx.get(cloud.url + path, timeout=10).status_code == 200, path
    assert httpx.get(f"{cloud.url}/v2/models/no-such-model/ready", timeout=10).status_code == 404
    from mlserver.grpc import dataplane_pb2 as pb
    from mlserver.grpc.dataplane_pb2_grpc import GRPCInferenceServiceStub

    with grpc.insecure_channel(cloud.grpc_address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name="cassava"), timeout=10).ready
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="cassava"), timeout=10)
        assert [o.name for o in metadata.outputs] == ["class_ids", "probabilities", "labels"]
    text = _metrics(cloud)
    assert "# TYPE cassava_predictions_total counter" in text
    assert "# TYPE cassava_batch_images histogram" in text


# ---------------------------------------------------------------------------------------------- answers


@pytest.mark.parametrize("over_grpc", [False, True], ids=["REST", "gRPC"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_standin_answers_equal_in_process_answers(cloud, standin_reference, kind, over_grpc):
    from cassava.shared.classifier import predict_pixels

    _, pixels, photos = _images("standin", 224, 12)
    expected = predict_pixels(standin_reference, pixels)
    class_ids, probabilities, labels = _infer(cloud, kind, pixels, photos, 1.0, over_grpc)
    assert probabilities.shape == (12, 6)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert class_ids.tolist() == expected.argmax(1).tolist()
    assert labels == [standin_reference.spec.class_names[i] for i in class_ids]


def test_the_tutorial_numpy_codec_client_works_unchanged(cloud, standin_reference):
    """The CropNet tutorial's client, as written: NumpyCodec `payload`, requests, class ids read from outputs[0]."""
    import requests
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest

    from cassava.shared.classifier import predict_pixels

    _, pixels, _ = _images("standin", 224, 9)
    input_data = pixels.astype(np.float32) / 255.0  # the tutorial's preprocess: [0, 1] floats, 224 x 224
    inference_url = f"{cloud.url}/v2/models/cassava/infer"
    inference_request = InferenceRequest(inputs=[NumpyCodec.encode_input(name="payload", payload=input_data)])
    res = requests.post(inference_url, json=inference_request.dict(), timeout=120)
    assert res.status_code == 200, res.text
    predictions = res.json()["outputs"][0]["data"]
    assert predictions == predict_pixels(standin_reference, pixels).argmax(1).tolist()


def test_concurrent_requests_are_batched(cloud, standin_reference):
    """Single-image requests sent at once share model calls (the batch-size histogram sees batches > 1 image),
    and each caller still gets its own image's answer."""
    from cassava.shared.classifier import predict_pixels

    _, pixels, photos = _images("standin", 224, 24)
    expected = predict_pixels(standin_reference, pixels).argmax(1)
    labels = dict(model_name="cassava", tier="cloud")
    for attempt in range(3):  # on 2 busy cores the requests might trickle in; a few rounds make the test robust
        before = _metrics(cloud)
        answers, errors = {}, []

        def one(index):
            try:
                answers[index] = _infer(cloud, "photos", pixels[index:index + 1], photos[index:index + 1],
                                        1.0, False)[0][0]
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(pixels))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors and [answers[i] for i in range(len(pixels))] == expected.tolist()
        after = _metrics(cloud)
        images = (_metric(after, "cassava_batch_images_sum", **labels)
                  - _metric(before, "cassava_batch_images_sum", **labels))
        batches = (_metric(after, "cassava_batch_images_count", **labels)
                   - _metric(before, "cassava_batch_images_count", **labels))
        singles = (_metric(after, "cassava_batch_images_bucket", le="1.0", **labels)
                   - _metric(before, "cassava_batch_images_bucket", le="1.0", **labels))
        over_max = batches - (_metric(after, "cassava_batch_images_bucket", le="16.0", **labels)
                              - _metric(before, "cassava_batch_images_bucket", le="16.0", **labels))
        assert images == len(pixels) and over_max == 0  # every image counted once; no batch above max_batch_images
        if batches < len(pixels) and singles < batches:
            return
    pytest.fail(f"no batch of more than one image in 3 rounds of {len(pixels)} concurrent requests")


def test_prediction_counter_counts_every_image_by_class(cloud):
    _, pixels, photos = _images("standin", 224, 6)
    before = _metrics(cloud)
    class_ids, _, labels = _infer(cloud, "pixels", pixels, photos, 1.0, True)
    after = _metrics(cloud)
    for name in set(labels):
        delta = (_metric(after, "cassava_predictions_total", model_name="cassava", tier="cloud", class_name=name)
                 - _metric(before, "cassava_predictions_total", model_name="cassava", tier="cloud", class_name=name))
        assert delta == labels.count(name), name


# ---------------------------------------------------------------------------------------------- bad input


def _post(server, body) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/cassava/infer", json=body, timeout=60)


def _bad_requests():
    """(name, request body, HTTP status, words the message must contain)."""
    from cassava.shared.protocol.v2 import build_request

    def body(request):
        return request.model_dump(mode="json", exclude_none=True)

    pixel = np.full((1, 224, 224, 3), 128, np.uint8)
    floats = body(build_request("float32", pixels=pixel))
    nan = body(build_request("float32", pixels=pixel))
    nan["inputs"][0]["data"][5] = "NaN"
    raw_range = body(build_request("float32", pixels=pixel, input_scale=255.0))
    short = body(build_request("uint8", pixels=pixel))
    short["inputs"][0]["shape"] = [2, 224, 224, 3]
    two = body(build_request("uint8", pixels=pixel))
    two["inputs"].append(floats["inputs"][0])
    renamed = body(build_request("uint8", pixels=pixel))
    renamed["inputs"][0]["name"] = "image"
    return [
        ("wrong size", body(build_request("uint8", pixels=np.zeros((1, 100, 100, 3), np.uint8))), 400,
         "expected images of [224, 224, 3]"),
        ("rank 3", {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 224, 224], "data": [0] * 10}]},
         400, "rank 4"),
        ("raw 0-255 floats to a [0, 1] model", raw_range, 400, "values outside [0, 1]"),
        ("NaN", nan, 400, "NaN"),
        ("fewer values than the shape", short, 400, "does not match shape [2, 224, 224, 3]"),
        ("corrupt photo", body(build_request("photo", photos=[b"\xff\xd8 not really a jpeg"])), 400, "photos"),
        ("not base64", {"inputs": [{"name": "photos", "datatype": "BYTES", "shape": [1], "data": ["%%%"],
                                    "parameters": {"content_type": "base64"}}]}, 400, "not valid base64"),
        ("pixels as FP64",
         {"inputs": [{"name": "pixels", "datatype": "FP64", "shape": [1, 224, 224, 3], "data": [0.0]}]},
         400, "datatype must be UINT8"),
        ("unknown input name", renamed, 400, "unknown input 'image'"),
        ("two inputs", two, 400, "exactly one input"),
        ("65 images", {"inputs": [{"name": "photos", "datatype": "BYTES", "shape": [65],
                                   "data": [base64.b64encode(b"x").decode()] * 65,
                                   "parameters": {"content_type": "base64"}}]},
         413, "above the limit of 64"),
        ("not V2 at all", {"instances": [[1, 2, 3]]}, 400, "inputs: Field required"),
    ]


def test_bad_requests_get_a_4xx_with_a_message_and_the_server_keeps_serving(cloud):
    failures = []
    for name, body, status, words in _bad_requests():
        response = _post(cloud, body)
        if response.status_code != status or words not in response.text:
            failures.append(f"{name}: HTTP {response.status_code} {response.text[:200]}")
    assert not failures, "\n".join(failures)
    _, pixels, photos = _images("standin", 224, 2)
    assert len(_infer(cloud, "photos", pixels, photos, 1.0, False)[0]) == 2 and cloud.alive()


def test_bad_requests_over_grpc_are_invalid_argument_with_the_message(cloud):
    from cassava.shared.protocol.transport import Rejected
    from cassava.shared.protocol.v2 import build_request

    transport = _transport(cloud, over_grpc=True)
    try:
        with pytest.raises(Rejected, match="INVALID_ARGUMENT.*expected images of \\[224, 224, 3\\]"):
            transport.infer(build_request("uint8", pixels=np.zeros((2, 64, 64, 3), np.uint8)))
        with pytest.raises(Rejected, match="INVALID_ARGUMENT.*photos'\\[1\\]"):
            transport.infer(build_request("photo", photos=[_png(), b"GIF89a broken"], grpc=True))
        with pytest.raises(Rejected, match="RESOURCE_EXHAUSTED.*above the limit"):
            transport.infer(build_request("photo", photos=[b"x"] * 65, grpc=True))
        _, pixels, photos = _images("standin", 224, 1)
        assert len(_infer(cloud, "photos", pixels, photos, 1.0, True)[0]) == 1
    finally:
        transport.close()


# ---------------------------------------------------------------------------------------------- a model that fails


def test_a_model_that_fails_to_load_stops_mlserver_with_one_clear_error(tmp_path):
    """MLServer itself logs the runtime's error and stops (with exit code 0: `cassava serve` turns that into 2)."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    server = LoopbackServer.mlserver(tmp_path / "server", *shipped_cloud(str(broken)))
    with pytest.raises(RuntimeError, match="mlserver exited with code 0"):
        server.start(timeout=180)
    errors = [line for line in server.log().splitlines() if line.startswith("cassava.shared.errors.CassavaError")]
    assert len(errors) == 1 and errors[0].startswith(
        f"cassava.shared.errors.CassavaError: model {broken}: cannot load SavedModel "
        "(OSError: Cannot parse file"), errors
    assert not server.alive()


# ---------------------------------------------------------------------------------------------- the third-party model


@pytest.mark.real
def test_real_model_metadata_follows_its_spec(real_cloud):
    metadata = httpx.get(f"{real_cloud.url}/v2/models/cassava", timeout=30).json()
    assert metadata["inputs"][0]["shape"] == [-1, 256, 256, 3]
    assert metadata["outputs"][1]["shape"] == [-1, len(REAL_CLASSES)]


@pytest.mark.real
@pytest.mark.parametrize("over_grpc", [False, True], ids=["REST", "gRPC"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_real_model_answers_the_27_photos_as_in_process(real_cloud, real_reference, real_photos, kind, over_grpc):
    """256 px, raw 0-255 pixels: the server applies the spec's pixel range to pixels and photos alike."""
    from cassava.shared.classifier import predict_pixels

    samples, pixels, photos = _images(str(real_photos), 256)
    expected = predict_pixels(real_reference, pixels)
    got = [_infer(real_cloud, kind, pixels[i:i + 9], photos[i:i + 9], 255.0, over_grpc)
           for i in range(0, len(pixels), 9)]
    class_ids = np.concatenate([g[0] for g in got])
    probabilities = np.concatenate([g[1] for g in got])
    labels = sum((g[2] for g in got), [])
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    assert class_ids.tolist() == expected.argmax(1).tolist()
    right = sum(label == sample.label for label, sample in zip(labels, samples))
    assert right == sum(REAL_CLASSES[i] == s.label for i, s in zip(expected.argmax(1), samples)) >= 18
