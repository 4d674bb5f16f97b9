"""V2 clients nobody here wrote, with their defaults, against both tiers as `cassava serve` runs them (stand-in
models, test_oip's fixtures), on the 27 real photos: every client's labels equal the tier's model run in this process,
with all outputs and with an output subset, and their health calls say live and ready.

  tritonclient.http, .http.aio   in this process (binary data extension by default)
  tritonclient.grpc, .grpc.aio   in a child process (clients/triton_grpc_job.py): its generated `inference` protobuf
                                 package and MLServer's cannot share one process
  KServe InferenceRESTClient (v2), InferenceGRPCClient   in a child process (clients/kserve_job.py), with the kserve
                                 package from $KSERVE_CLIENT (`make kserve-client`: `pip install --no-deps --target`
                                 of kserve and the modules its import needs, ~140 MB, 126 of them the kubernetes
                                 client); a plain `pip install kserve` would upgrade FastAPI and Starlette under
                                 MLServer, so it is not a dev dependency
  mlserver infer (REST)          the CLI; its `-b` (binary data) sends base64 text as the raw bytes, a bug of that
                                 client (named in the test below)
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import BIN, REAL_PHOTOS, require_shared

pytestmark = [pytest.mark.slow, pytest.mark.real]
TIERS = ("cloud", "edge")
BATCH = 9
CLIENTS = Path(__file__).parent / "clients"
CACHE = Path(os.environ.get("CASSAVA_CACHE", Path.home() / ".cache" / "cassava"))
KSERVE_CLIENT = Path(os.environ.get("KSERVE_CLIENT", CACHE / "kserve-client-0.21.0"))  # make kserve-client


@pytest.fixture(scope="module")
def files():
    require_shared(REAL_PHOTOS)
    from cassava.shared.data import load_samples

    return [str(s.source) for s in load_samples(str(REAL_PHOTOS))]


@pytest.fixture(scope="module")
def expected(files, standin_model, standin_int8):
    """Each tier's labels for the 27 photos from its model in this process, on the shared preprocessing's pixels."""
    from cassava.cloud.model import load_tf_classifier
    from cassava.edge.interpreter import load_tflite_classifier
    from cassava.shared.classifier import predict_pixels
    from cassava.shared.preprocess import preprocess

    answers = {}
    for tier, classifier in (("cloud", load_tf_classifier("standin")), ("edge", load_tflite_classifier(standin_int8))):
        pixels = np.stack([preprocess(Path(f).read_bytes(), classifier.spec.input_size) for f in files])
        answers[tier] = [classifier.spec.class_names[i] for i in predict_pixels(classifier, pixels).argmax(1)]
    return answers


def _chunks(items):
    return [items[i:i + BATCH] for i in range(0, len(items), BATCH)]


def _job(script: Path, job: dict, env=None) -> dict:
    result = subprocess.run([sys.executable, str(script)], input=json.dumps(job), capture_output=True, text=True,
                            timeout=600, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def _check(answers: dict, expected_labels, subset=("labels",)):
    """Each client run: all outputs when none asked, only `subset` when asked; labels and health as expected."""
    for run, answer in answers.items():
        outputs = ["class_ids", "labels", "probabilities"] if run.endswith("[]") else sorted(subset)
        assert answer["outputs"] == outputs, run
        assert answer["labels"] == expected_labels, run
        assert answer["health"] == [True, True, True], run


@pytest.mark.parametrize("tier", TIERS)
def test_tritonclient_http_sync_and_aio(standin_servers, files, expected, tier):
    import tritonclient.http as triton_http
    import tritonclient.http.aio as triton_http_aio

    url = standin_servers[tier].url.removeprefix("http://")
    photos_ = [Path(f).read_bytes() for f in files]

    def inputs(chunk):
        tensor = triton_http.InferInput("photos", [len(chunk)], "BYTES")
        tensor.set_data_from_numpy(np.array(chunk, dtype=np.object_))  # binary_data=True, its default
        return [tensor]

    def answer(results, health):
        names = sorted({o["name"] for r in results for o in r.get_response()["outputs"]})
        labels = [x.decode() for r in results if "labels" in names for x in r.as_numpy("labels").reshape(-1)]
        return {"outputs": names, "labels": labels, "health": health}

    client = triton_http.InferenceServerClient(url, network_timeout=120)
    answers = {}
    try:
        health = [client.is_server_live(), client.is_server_ready(), client.is_model_ready("cassava")]
        for outputs in ([], ["labels"]):
            asked = [triton_http.InferRequestedOutput(name) for name in outputs] or None
            results = [client.infer("cassava", inputs(c), outputs=asked) for c in _chunks(photos_)]
            answers[f"http {outputs}"] = answer(results, health)
    finally:
        client.close()

    async def aio():
        client = triton_http_aio.InferenceServerClient(url, conn_timeout=120)
        try:
            health = [await client.is_server_live(), await client.is_server_ready(),
                      await client.is_model_ready("cassava")]
            for outputs in ([], ["labels"]):
                asked = [triton_http.InferRequestedOutput(name) for name in outputs] or None
                results = [await client.infer("cassava", inputs(c), outputs=asked) for c in _chunks(photos_)]
                answers[f"http.aio {outputs}"] = answer(results, health)
        finally:
            await client.close()

    asyncio.run(aio())
    assert len(answers) == 4
    _check(answers, expected[tier])


@pytest.mark.parametrize("tier", TIERS)
def test_tritonclient_grpc_sync_and_aio(standin_servers, files, expected, tier):
    answers = _job(CLIENTS / "triton_grpc_job.py", {"grpc": standin_servers[tier].grpc_address, "photos": files,
                                                    "batch": BATCH})
    assert len(answers) == 4
    _check(answers, expected[tier])


@pytest.mark.parametrize("tier", TIERS)
def test_kserve_rest_v2_and_grpc_clients(standin_servers, files, expected, tier):
    if not (KSERVE_CLIENT / "kserve").is_dir():
        pytest.skip(f"KServe's client is not installed in {KSERVE_CLIENT} (make kserve-client)")
    server = standin_servers[tier]
    job = {"url": server.url, "grpc": server.grpc_address, "photos": files, "batch": BATCH}
    answers = _job(CLIENTS / "kserve_job.py", job, env={"PYTHONPATH": str(KSERVE_CLIENT)})
    assert len(answers) == 4
    _check(answers, expected[tier])


def _mlserver_infer(server, tmp_path, files, *flags):
    requests = tmp_path / "requests.jsonl"
    with open(requests, "w") as handle:
        for chunk in _chunks(files):
            data = [base64.b64encode(Path(f).read_bytes()).decode() for f in chunk]
            handle.write(json.dumps({"inputs": [{"name": "photos", "datatype": "BYTES", "shape": [len(chunk)],
                                                 "parameters": {"content_type": "base64"}, "data": data}]}) + "\n")
    answers = tmp_path / "answers.jsonl"
    result = subprocess.run([str(BIN / "mlserver"), "infer", "-u", server.url.removeprefix("http://"), "-m", "cassava",
                             "-i", str(requests), "-o", str(answers), "-w", "1", *flags],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    return sorted(lines, key=lambda a: a["parameters"]["batch_index"])


@pytest.mark.parametrize("tier", TIERS)
def test_mlserver_infer_rest(standin_servers, files, expected, tmp_path, tier):
    answers = _mlserver_infer(standin_servers[tier], tmp_path, files)
    labels = [label for a in answers for label in next(o for o in a["outputs"] if o["name"] == "labels")["data"]]
    assert labels == expected[tier]


@pytest.mark.parametrize("tier", TIERS)
def test_mlserver_infer_binary_sends_base64_text_as_the_bytes_a_client_bug(standin_servers, files, tmp_path, tier):
    """`mlserver infer -b` puts each BYTES element's base64 text, not the bytes it encodes, in the binary part: the
    server is right to say "not an image" (a 400 each; the CLI records it per request and exits 0)."""
    answers = _mlserver_infer(standin_servers[tier], tmp_path, files[:BATCH], "-b")
    assert answers and all("not an image" in a["error"]["msg"] for a in answers), answers
