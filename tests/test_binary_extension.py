"""Any V2 client works: Triton's own clients, with their defaults, against both tiers serving the real third-party
model (256 px, raw 0-255 pixels, 5 classes) on the 27 real photos, with the same top-1 as the model in process.

`tritonclient.http` sends every input in the binary data extension and asks for binary outputs by default; the
servers' REST layer (shared/server/rest.py) translates. `tritonclient.grpc` runs in a child process: its generated
protobuf module and MLServer's register the same `inference` package, and one process cannot import both.
The edge runs with TensorFlow unimportable, on the int8 TFLite copy the suite converts (test_convert.converted).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from helpers import REAL_CLASSES, REPO, LoopbackServer, converted, real_args

pytestmark = [pytest.mark.slow, pytest.mark.real]

BATCH = 9
KINDS = {"photos": "BYTES", "pixels": "UINT8", "payload": "FP32"}

GRPC_CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as triton_grpc

job = json.load(sys.stdin)
client = triton_grpc.InferenceServerClient(job["address"])
answers = {}
for name, datatype, path in job["inputs"]:
    array = np.load(path, allow_pickle=True)
    class_ids = []
    for start in range(0, len(array), job["batch"]):
        tensor = triton_grpc.InferInput(name, list(array[start:start + job["batch"]].shape), datatype)
        tensor.set_data_from_numpy(array[start:start + job["batch"]])
        class_ids += client.infer("cassava", [tensor]).as_numpy("class_ids").reshape(-1).tolist()
    answers[name] = class_ids
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def photos(real_photos):
    """(samples, the files' bytes, uint8 pixels [27, 256, 256, 3] by the shared preprocessing)."""
    from cassava.shared.data import load_samples
    from cassava.shared.preprocess import preprocess

    samples = load_samples(str(real_photos))
    files = [Path(s.source).read_bytes() for s in samples]
    return samples, files, np.stack([preprocess(f, 256) for f in files])


@pytest.fixture(scope="module")
def edge_model(conversions, real_model):  # noqa: F811 (the fixture imported above)
    return converted(conversions, "real-int8", *real_args("int8"))


@pytest.fixture(scope="module")
def cloud(real_cloud):  # noqa: F811 (the fixture imported above)
    return real_cloud


@pytest.fixture(scope="module")
def edge(tmp_path_factory, edge_model, no_tensorflow):  # noqa: F811 (the fixture imported above)
    server = LoopbackServer.shipped(tmp_path_factory.mktemp("binary-edge"), "edge", edge_model, no_tensorflow)
    server.start(timeout=180)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def in_process(photos, real_model, edge_model):
    """Each tier's model run in this process on the same pixels: the reference top-1 and probabilities."""
    from cassava.cloud.model import load_tf_classifier
    from cassava.edge.interpreter import load_tflite_classifier
    from cassava.shared.classifier import predict_pixels

    pixels = photos[2]
    return {"cloud": predict_pixels(load_tf_classifier(str(real_model), input_scale=255, classes=REAL_CLASSES), pixels),
            "edge": predict_pixels(load_tflite_classifier(edge_model), pixels)}


def _arrays(photos) -> dict:
    """What a user hands tritonclient for each input: the JPEG files, uint8 pixels, raw-range float32 pixels."""
    _, files, pixels = photos
    return {"photos": np.array(files, dtype=np.object_), "pixels": pixels, "payload": pixels.astype(np.float32)}


@pytest.mark.parametrize("tier", ["cloud", "edge"])
@pytest.mark.parametrize("name", list(KINDS))
def test_tritonclient_http_with_its_defaults_gets_the_in_process_answers(request, photos, in_process, tier, name):
    server = request.getfixturevalue(tier)
    array = _arrays(photos)[name]
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
    class_ids, probabilities, labels = [], [], []
    try:
        for start in range(0, len(array), BATCH):
            tensor = triton_http.InferInput(name, list(array[start:start + BATCH].shape), KINDS[name])
            tensor.set_data_from_numpy(array[start:start + BATCH])  # binary_data=True, its default
            result = client.infer("cassava", [tensor])  # no outputs named: it asks for all of them in binary
            assert result.get_response()["outputs"][1]["parameters"]["binary_data_size"] == 4 * BATCH * 5
            class_ids += result.as_numpy("class_ids").tolist()
            probabilities.append(result.as_numpy("probabilities"))
            labels += [label.decode() for label in result.as_numpy("labels")]
    finally:
        client.close()
    expected = in_process[tier]
    assert class_ids == expected.argmax(1).tolist()
    np.testing.assert_allclose(np.concatenate(probabilities), expected, atol=1e-4)
    assert labels == [REAL_CLASSES[i] for i in class_ids]


@pytest.mark.parametrize("tier", ["cloud", "edge"])
def test_tritonclient_grpc_with_its_defaults_gets_the_in_process_answers(request, tmp_path, photos, in_process, tier):
    server = request.getfixturevalue(tier)
    inputs = []
    for name, array in _arrays(photos).items():
        np.save(tmp_path / f"{name}.npy", array, allow_pickle=True)
        inputs.append([name, KINDS[name], str(tmp_path / f"{name}.npy")])
    job = json.dumps({"address": server.grpc_address, "inputs": inputs, "batch": BATCH})
    result = subprocess.run([sys.executable, "-c", GRPC_CLIENT], input=job, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    answers = json.loads(result.stdout)
    assert answers == {name: in_process[tier].argmax(1).tolist() for name in KINDS}


@pytest.mark.parametrize("tier", ["cloud", "edge"])
def test_tritonclient_http_with_json_inputs_and_named_outputs(request, photos, in_process, tier):
    """binary_data=False on the input, one output asked for as JSON, one in binary: each as asked."""
    server = request.getfixturevalue(tier)
    pixels = photos[2][:3]
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
    try:
        tensor = triton_http.InferInput("pixels", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels, binary_data=False)
        outputs = [triton_http.InferRequestedOutput("class_ids", binary_data=False),
                   triton_http.InferRequestedOutput("labels", binary_data=True)]
        result = client.infer("cassava", [tensor], outputs=outputs)
    finally:
        client.close()
    response = {o["name"]: o for o in result.get_response()["outputs"]}
    assert "data" in response["class_ids"] and "binary_data_size" in response["labels"]["parameters"]
    assert result.as_numpy("class_ids").tolist() == in_process[tier][:3].argmax(1).tolist()


def _readme_curl() -> str:
    """The documented curl example for the binary form (docs/v2-interface.md), as printed there."""
    text = (REPO / "docs" / "v2-interface.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if "Inference-Header-Content-Length" in b and "curl" in b]
    assert len(found) == 1, "docs/v2-interface.md should show one curl example of the binary form"
    return found[0]


@pytest.mark.parametrize("tier", ["cloud", "edge"])
def test_the_readmes_curl_example_posts_one_jpeg(request, photos, in_process, tier):
    server = request.getfixturevalue(tier)
    samples = photos[0]
    command = _readme_curl().replace("leaf.jpg", str(samples[0].source)).replace("http://127.0.0.1:8080", server.url)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "LC_ALL": "C"})
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["outputs"][0]["data"] == [int(in_process[tier][0].argmax())]


@pytest.mark.parametrize("tier", ["cloud", "edge"])
def test_our_clients_binary_wire_gets_the_in_process_answers(request, photos, in_process, tier):
    from cassava.shared.protocol.transport import HttpTransport
    from cassava.shared.protocol.v2 import build_request, decode_response

    server = request.getfixturevalue(tier)
    transport = HttpTransport(server.url, timeout=120, retries=0)
    try:
        got = [decode_response(transport.infer(build_request("binary", pixels=photos[2][i:i + BATCH])))
               for i in range(0, 27, BATCH)]
    finally:
        transport.close()
    np.testing.assert_allclose(np.concatenate([g[1] for g in got]), in_process[tier], atol=1e-4)
    assert np.concatenate([g[0] for g in got]).tolist() == in_process[tier].argmax(1).tolist()
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
