"""Both tiers' MLServer runtimes in this process, the way MLServer tests its own runtimes: `ModelSettings` from the
shipped model-settings.json (only the model's uri changed) -> `await runtime.load()` -> `await
runtime.predict(InferenceRequest)`. Answers are checked against a reference outside the runtime: TensorFlow's
SavedModel for the cloud, LiteRT's bare interpreter for the edge."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest, RequestInput

from cassava.shared.data import load_samples
from cassava.shared.errors import CassavaError
from cassava.shared.labels import CROPNET_CLASSES
from cassava.shared.preprocess import preprocess
from cassava.shared.protocol.v2 import BadRequest, build_request, decode_response

from helpers import REPO, litert_answers

TIERS = ("cloud", "edge")
WIRES = ("float32", "uint8", "compact", "photo")


def settings_for(tier: str, uri: str, **extra) -> ModelSettings:
    """The tier's shipped model-settings.json with the uri (and any given extra) changed."""
    data = json.loads((REPO / tier / "model-settings.json").read_text())
    data["parameters"]["uri"] = uri
    data["parameters"]["extra"].update(extra)
    return ModelSettings.model_validate(data)


@pytest.fixture(scope="module")
def loop():
    """One event loop for the module: a runtime's micro-batcher lives on the loop it was loaded in."""
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture(scope="module")
def photos(standin_data):
    samples = load_samples("standin", 5)
    files = [Path(s.source).read_bytes() for s in samples]
    return files, np.stack([preprocess(f, 224) for f in files])


def cloud_reference(pixels: np.ndarray) -> np.ndarray:
    """TensorFlow itself on the stand-in SavedModel: its serving signature on [0, 1] floats."""
    import tensorflow as tf

    from cassava.shared.cache import standin_model_dir

    model = tf.saved_model.load(str(standin_model_dir()))
    outputs = model.signatures["serving_default"](tf.constant(pixels.astype(np.float32) / 255.0))
    return next(iter(outputs.values())).numpy()


@pytest.fixture(scope="module")
def runtimes(loop, standin_model, standin_tflite):
    from cassava.cloud.runtime import CloudRuntime
    from cassava.edge.runtime import EdgeRuntime

    loaded = {"cloud": CloudRuntime(settings_for("cloud", "standin")),
              "edge": EdgeRuntime(settings_for("edge", str(standin_tflite)))}
    for runtime in loaded.values():
        assert loop.run(runtime.load()) is True  # rest.check_in_force(): no REST app in this process, so it passes
    yield loaded
    for runtime in loaded.values():
        loop.run(runtime.unload())


@pytest.fixture(scope="module")
def references(photos, standin_tflite):
    _, pixels = photos
    return {"cloud": cloud_reference(pixels), "edge": litert_answers(standin_tflite / "model.tflite", pixels / 255.0)}


def rest(request: InferenceRequest) -> InferenceRequest:
    """What MLServer's REST layer hands the runtime: the request after JSON and back."""
    return InferenceRequest.model_validate_json(request.model_dump_json())


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("wire", WIRES)
def test_every_wire_gets_the_references_answers(loop, runtimes, references, photos, tier, wire):
    files, pixels = photos
    request = rest(build_request(wire, pixels=pixels, photos=files, request_id=f"{tier}-{wire}"))
    response = loop.run(runtimes[tier].predict(request))
    class_ids, probabilities, labels = decode_response(response)
    expected = references[tier]
    np.testing.assert_allclose(probabilities, expected, atol=1e-4 if tier == "cloud" else 1e-6)
    assert class_ids.tolist() == expected.argmax(1).tolist()
    assert labels == [CROPNET_CLASSES[i] for i in expected.argmax(1)]
    assert response.id == f"{tier}-{wire}" and response.model_name == "cassava"


@pytest.mark.parametrize("tier", TIERS)
def test_photos_as_raw_bytes_as_grpc_sends_them(loop, runtimes, references, photos, tier):
    files, _ = photos
    response = loop.run(runtimes[tier].predict(build_request("photo", photos=files, grpc=True)))
    assert decode_response(response)[0].tolist() == references[tier].argmax(1).tolist()


@pytest.mark.parametrize("tier", TIERS)
def test_concurrent_requests_each_get_their_own_answers(loop, runtimes, references, photos, tier):
    _, pixels = photos

    async def many():
        requests = [rest(build_request("uint8", pixels=pixels[i:i + 1])) for i in range(len(pixels))] * 3
        return await asyncio.gather(*(runtimes[tier].predict(r) for r in requests))

    answers = [decode_response(r)[1][0] for r in loop.run(many())]
    np.testing.assert_allclose(np.stack(answers), np.concatenate([references[tier]] * 3), atol=1e-4)


@pytest.mark.parametrize("tier", TIERS)
def test_metadata_says_what_the_model_is(loop, runtimes, tier):
    metadata = loop.run(runtimes[tier].metadata())
    parameters = metadata.parameters.model_dump()
    assert parameters["tier"] == tier and parameters["standin"] == "true"
    assert parameters["class_names"] == ",".join(CROPNET_CLASSES) and parameters["input_scale"] == "1"
    assert metadata.name == "cassava"
    assert [i.shape for i in metadata.inputs][0] == [-1, 224, 224, 3]


def _pixels_input(shape, datatype="UINT8", name="pixels"):
    return RequestInput(name=name, shape=list(shape), datatype=datatype, data=[0] * int(np.prod(shape)))


BAD = {
    "two inputs": (InferenceRequest(inputs=[_pixels_input((1, 224, 224, 3)), _pixels_input((1, 224, 224, 3))]),
                   400, "expected exactly one input"),
    "wrong size": (InferenceRequest(inputs=[_pixels_input((1, 32, 32, 3))]), 400,
                   "expected images of [224, 224, 3] (H, W, C), got [32, 32, 3]"),
    "wrong rank": (InferenceRequest(inputs=[_pixels_input((224, 224, 3))]), 400, "expected rank 4"),
    "too few values": (InferenceRequest(inputs=[RequestInput(name="pixels", shape=[1, 224, 224, 3], datatype="UINT8",
                                                             data=[0] * 10)]), 400, "data does not match shape"),
    "over the batch limit": (InferenceRequest(inputs=[_pixels_input((65, 224, 224, 3))]), 413, "above the limit"),
    "float pixels": (InferenceRequest(inputs=[_pixels_input((1, 224, 224, 3), "FP32")]), 400, "must be UINT8"),
    "unknown input": (InferenceRequest(inputs=[_pixels_input((1, 224, 224, 3), name="x")]), 400, "unknown input"),
    "photo not an image": (build_request("photo", photos=[b"not an image"]), 400,
                           "input 'photos'[0]: image bytes: not an image"),
}


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_request_is_a_bad_request_and_the_runtime_still_answers(loop, runtimes, references, photos, tier, case):
    request, status, message = BAD[case]
    with pytest.raises(BadRequest) as error:
        loop.run(runtimes[tier].predict(rest(request)))
    assert error.value.status_code == status and message in str(error.value)
    _, pixels = photos
    answer = decode_response(loop.run(runtimes[tier].predict(rest(build_request("uint8", pixels=pixels[:1])))))
    np.testing.assert_allclose(answer[1], references[tier][:1], atol=1e-4)


def test_edge_interpreters_follow_the_shipped_parameters_extra(runtimes):
    shipped = json.loads((REPO / "edge" / "model-settings.json").read_text())["parameters"]["extra"]
    edge = runtimes["edge"]
    assert edge.classifier.pool_size == shipped["pool_size"] and edge.classifier.num_threads == shipped["num_threads"]
    assert edge.max_request_images == shipped["max_request_images"]


@pytest.mark.parametrize("tier", TIERS)
def test_classes_from_parameters_extra_name_the_answers(loop, standin_tflite, references, photos, tier):
    from cassava.cloud.runtime import CloudRuntime
    from cassava.edge.runtime import EdgeRuntime

    renamed = ("a", "b", "c", "d", "e", "f")
    uri = "standin" if tier == "cloud" else str(standin_tflite)
    runtime = {"cloud": CloudRuntime, "edge": EdgeRuntime}[tier](settings_for(tier, uri, classes=",".join(renamed)))
    assert loop.run(runtime.load())
    _, pixels = photos
    labels = decode_response(loop.run(runtime.predict(rest(build_request("uint8", pixels=pixels)))))[2]
    assert labels == [renamed[i] for i in references[tier].argmax(1)]
    loop.run(runtime.unload())


@pytest.mark.parametrize("tier", TIERS)
def test_a_missing_model_folder_fails_the_load_with_its_path(loop, tmp_path, tier):
    from cassava.cloud.runtime import CloudRuntime
    from cassava.edge.runtime import EdgeRuntime

    missing = tmp_path / "no-such-model"
    runtime = {"cloud": CloudRuntime, "edge": EdgeRuntime}[tier](settings_for(tier, str(missing)))
    with pytest.raises(CassavaError, match="model file or folder not found"):
        loop.run(runtime.load())


def test_a_model_settings_without_uri_fails_the_load(loop):
    from cassava.edge.runtime import EdgeRuntime

    data = json.loads((REPO / "edge" / "model-settings.json").read_text())
    del data["parameters"]["uri"]
    with pytest.raises(CassavaError, match="parameters.uri is not set"):
        loop.run(EdgeRuntime(ModelSettings.model_validate(data)).load())
