"""The edge tier: the TFLite classifier (pooled interpreters, quantized I/O) and a real `mlserver start` of the
shipped edge/ settings, answering REST and gRPC for every input kind with TensorFlow unimportable.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from helpers import REAL_CLASSES, REPO, LoopbackServer, converted, real_args, run_cli, standin_args

pytestmark = pytest.mark.slow

def _images(data: str, size: int, n=None):
    from cassava.shared.data import load_samples
    from cassava.shared.preprocess import preprocess

    samples = load_samples(data, n)
    photos = [Path(s.source).read_bytes() for s in samples]
    return np.stack([preprocess(p, size) for p in photos]), photos


def _expected(model_dir: Path, pixels: np.ndarray) -> np.ndarray:
    """What the same model answers in this process: the reference for every server answer."""
    from cassava.edge.interpreter import load_tflite_classifier
    from cassava.shared.classifier import predict_pixels

    return predict_pixels(load_tflite_classifier(model_dir), pixels)


# ---------------------------------------------------------------------------------------------- in process


def test_edge_package_imports_without_tensorflow(no_tensorflow):
    code = ("import sys, cassava.edge, cassava.edge.runtime, cassava.edge.interpreter as i; "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; print(i.BACKEND)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **no_tensorflow}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ai-edge-litert"


def test_the_edge_extra_installs_no_tensorflow():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    edge = " ".join(project["optional-dependencies"]["edge"] + project["dependencies"]).lower()
    assert "ai-edge-litert" in edge and "mlserver" in edge
    assert not any(name in edge for name in ("tensorflow", "keras", "tf-keras", "tflite-model-maker"))


def test_in_process_predict_cli_runs_without_tensorflow(standin_int8, no_tensorflow):
    result = run_cli("predict", "--in-process", "--model", standin_int8, "--data", "standin", "-n", 8, "--quiet",
                     env=no_tensorflow, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "8 images classified" in result.stdout and "stand-in model, synthetic data" in result.stdout


def test_classifier_handles_any_batch_and_uses_the_spec(standin_int8):
    from cassava.edge.interpreter import load_tflite_classifier

    classifier = load_tflite_classifier(standin_int8)
    assert classifier.spec.input_size == 224 and classifier.spec.class_names[-1] == "unknown"
    assert classifier.input.dtype == np.uint8 and classifier.output.dtype == np.uint8
    pixels, _ = _images("standin", 224, 5)
    x = pixels.astype(np.float32) / 255.0
    batch = classifier.predict(x)
    assert batch.shape == (5, 6) and batch.dtype == np.float32
    assert np.allclose(batch.sum(axis=1), 1.0, atol=0.02)  # dequantized softmax, steps of 1/256
    assert np.array_equal(np.concatenate([classifier.predict(x[i:i + 1]) for i in range(5)]), batch)
    assert classifier.predict(x[:0]).shape == (0, 6)
    # a bare model.tflite (no cassava-model.json beside it) still loads, with its input size read from the model
    bare = standin_int8.parent / "bare.tflite"
    shutil.copyfile(standin_int8 / "model.tflite", bare)
    assert load_tflite_classifier(bare).spec.input_size == 224


def test_int8_and_float_io_give_the_same_answers(conversions, standin_model, standin_int8):
    """Quantized input/output are handled with each tensor's own scale and zero point."""
    from cassava.edge.interpreter import load_tflite_classifier

    int8_io = converted(conversions, "standin-int8-io-int8", *standin_args("int8", "--io", "int8"))
    float_io = converted(conversions, "standin-int8-io-float32", *standin_args("int8", "--io", "float32"))
    pixels, _ = _images("standin", 224, 40)
    reference = _expected(standin_int8, pixels)
    for out, dtype in ((int8_io, np.int8), (float_io, np.float32)):
        classifier = load_tflite_classifier(out)
        assert classifier.input.dtype == dtype
        got = _expected(out, pixels)
        assert np.mean(got.argmax(1) == reference.argmax(1)) >= 0.95
        assert np.abs(got - reference).max() <= 0.05


def test_interpreter_pool_is_thread_safe(standin_int8):
    """8 threads share one classifier of 2 pooled interpreters: every answer equals the sequential one."""
    from cassava.edge.interpreter import load_tflite_classifier

    classifier = load_tflite_classifier(standin_int8, pool_size=2)
    pixels, _ = _images("standin", 224, 24)
    x = pixels.astype(np.float32) / 255.0
    expected = np.concatenate([classifier.predict(x[i:i + 1]) for i in range(len(x))])
    failures = []

    def worker(seed):
        rng = np.random.RandomState(seed)
        for _ in range(15):
            idx = rng.choice(len(x), size=rng.randint(1, 5), replace=False)
            if not np.array_equal(classifier.predict(x[idx]), expected[idx]):
                failures.append((seed, idx.tolist()))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads) and not failures


def test_bad_models_are_one_clear_error(standin_int8, tmp_path):
    from cassava.edge.interpreter import load_tflite_classifier
    from cassava.shared.errors import CassavaError

    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"not a flatbuffer" * 64)
    cases = [
        (dict(model=tmp_path / "missing"), "no such TFLite file"),
        (dict(model=tmp_path), "no such TFLite file"),
        (dict(model=corrupt), "not a valid TFLite model"),
        (dict(model=standin_int8, input_tensor="nope"), "no input tensor named 'nope' (has serving_default_image:0)"),
        (dict(model=standin_int8, output_tensor="nope"), "no output tensor named 'nope'"),
        (dict(model=standin_int8, classes=("a", "b")), "model returns 6 scores but the spec names 2 classes"),
    ]
    for kwargs, message in cases:
        with pytest.raises(CassavaError) as error:
            load_tflite_classifier(**kwargs)
        assert message in str(error.value) and "\n" not in str(error.value)


def test_runtime_reads_interpreter_settings_from_parameters_extra(standin_int8):
    from mlserver.settings import ModelParameters, ModelSettings

    from cassava.edge.runtime import EdgeRuntime
    from cassava.shared.errors import CassavaError

    def runtime(**extra):
        return EdgeRuntime(ModelSettings(name="cassava", implementation=EdgeRuntime,
                                         parameters=ModelParameters(uri=str(standin_int8), extra=extra)))

    edge = runtime(pool_size=3, num_threads=2)
    assert asyncio.run(edge.load())
    assert edge.classifier.pool_size == 3 and edge.classifier.num_threads == 2
    assert edge._serving.batcher._executor._max_workers == 3  # concurrent batches default to the pool size
    asyncio.run(edge.unload())
    with pytest.raises(CassavaError, match="no input tensor named 'wrong:0'"):
        asyncio.run(runtime(input_tensor="wrong:0").load())


# ---------------------------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def edge(tmp_path_factory, standin_int8, no_tensorflow):
    server = LoopbackServer.shipped(tmp_path_factory.mktemp("edge-server"), "edge", standin_int8, no_tensorflow)
    server.start(timeout=180)
    yield server
    server.stop()


def _rest(server, request) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/cassava/infer", json=request.model_dump(mode="json", exclude_none=True),
                      timeout=120)


def _infer_rest(server, request):
    from mlserver.types import InferenceResponse

    from cassava.shared.protocol.v2 import decode_response

    response = _rest(server, request)
    assert response.status_code == 200, response.text
    return decode_response(InferenceResponse.model_validate(response.json()))


def _infer_grpc(server, request):
    from mlserver.grpc import converters, dataplane_pb2_grpc

    from cassava.shared.protocol.v2 import decode_response

    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(converters.ModelInferRequestConverter.from_types(request, model_name="cassava"),
                                timeout=120)
    return decode_response(converters.ModelInferResponseConverter.to_types(reply))


def _request(kind: str, pixels, photos, scale: float, over_grpc: bool):
    from cassava.shared.protocol.v2 import build_request

    wire = {"payload": "float32", "pixels": "uint8", "photos": "photo", "webp": "compact"}[kind]
    return build_request(wire, pixels=pixels, photos=photos, input_scale=scale, grpc=over_grpc)


def test_server_runs_the_shipped_settings_without_tensorflow(edge):
    metadata = httpx.get(f"{edge.url}/v2/models/cassava", timeout=30).json()
    assert [i["name"] for i in metadata["inputs"]] == ["payload", "pixels", "photos"]
    assert metadata["outputs"][1]["shape"] == [-1, 6]
    assert "Traceback" not in edge.log()


@pytest.mark.parametrize("transport", ["REST", "gRPC"])
@pytest.mark.parametrize("kind", ["payload", "pixels", "photos", "webp"])
def test_server_answers_equal_the_in_process_answers(edge, standin_int8, transport, kind):
    pixels, photos = _images("standin", 224, 5)
    expected = _expected(standin_int8, pixels)
    infer = _infer_grpc if transport == "gRPC" else _infer_rest
    class_ids, probabilities, labels = infer(edge, _request(kind, pixels, photos, 1.0, transport == "gRPC"))
    assert probabilities.shape == (5, 6)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert class_ids.tolist() == expected.argmax(1).tolist()
    assert labels == [("cbb", "cbsd", "cgm", "cmd", "healthy", "unknown")[i] for i in class_ids]


def test_eight_concurrent_clients_get_their_own_answers(edge, standin_int8):
    pixels, photos = _images("standin", 224, 24)
    expected = _expected(standin_int8, pixels)
    failures, errors = [], []

    def client(seed):
        rng = np.random.RandomState(seed)
        try:
            for round_ in range(4):
                idx = rng.choice(len(pixels), size=rng.randint(1, 4), replace=False)
                over_grpc = (seed + round_) % 2 == 1
                kind = ("pixels", "photos")[round_ % 2]
                request = _request(kind, pixels[idx], [photos[i] for i in idx], 1.0, over_grpc)
                _, probabilities, _ = (_infer_grpc if over_grpc else _infer_rest)(edge, request)
                if not np.allclose(probabilities, expected[idx], atol=1e-6):
                    failures.append((seed, round_, idx.tolist()))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors and not failures and not any(t.is_alive() for t in threads)


def test_bad_requests_get_4xx_and_the_server_keeps_serving(edge):
    from cassava.shared.protocol.v2 import build_request

    corrupt = build_request("photo", photos=[b"\xff\xd8 this is not a jpeg"])
    response = _rest(edge, corrupt)
    assert response.status_code == 400 and "photos" in response.text
    wrong_size = build_request("uint8", pixels=np.zeros((1, 100, 100, 3), np.uint8))
    response = _rest(edge, wrong_size)
    assert response.status_code == 400 and "expected images of [224, 224, 3]" in response.text
    pixels, _ = _images("standin", 224, 1)
    class_ids, _, _ = _infer_rest(edge, build_request("uint8", pixels=pixels))
    assert len(class_ids) == 1 and edge.alive()


@pytest.mark.real
def test_real_model_edge_server_answers_the_27_photos(tmp_path, conversions, real_model, real_photos, no_tensorflow):
    """A 256-px model that takes raw 0-255 pixels: the edge applies the spec's pixel range, photos and payloads
    alike."""
    int8 = converted(conversions, "real-int8", *real_args("int8"))
    pixels, photos = _images(str(real_photos), 256)
    expected = _expected(int8, pixels)
    server = LoopbackServer.shipped(tmp_path / "edge-real", "edge", int8, no_tensorflow).start(timeout=180)
    try:
        for kind, over_grpc in (("photos", False), ("payload", True)):
            infer = _infer_grpc if over_grpc else _infer_rest
            got = np.concatenate([
                infer(server, _request(kind, pixels[i:i + 9], photos[i:i + 9], 255.0, over_grpc))[1]
                for i in range(0, 27, 9)])
            np.testing.assert_allclose(got, expected, atol=1e-6)
        probabilities = httpx.get(f"{server.url}/v2/models/cassava", timeout=30).json()["outputs"][1]
        assert probabilities["shape"] == [-1, len(REAL_CLASSES)]
    finally:
        server.stop()
