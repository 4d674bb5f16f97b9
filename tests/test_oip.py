"""Open Inference Protocol conformance of both tiers, as `cassava serve` runs them (stand-in models): requested
outputs, OIP error objects and health bodies, bounded metric labels, gRPC health and reflection, quiet logs for
clients' mistakes, metadata that matches the answers, no zombie in the server's process group, and the decision on
base64 `photos` without a content_type. The behaviours MLServer itself gets wrong are put right in
shared/server/rest.py and shared/server/conformance.py; these tests fail if an MLServer upgrade moves them.
"""
from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from cassava.shared.server.process import ServerProcess

from helpers import BIN, REAL_PHOTOS, free_port
from test_edge import conversions, no_tensorflow, standin_int8  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow
TIERS = ("cloud", "edge")
OUTPUTS = ["class_ids", "probabilities", "labels"]


class Served(ServerProcess):
    """`cassava serve TIER --model MODEL` on free loopback ports, in its own process group."""

    def __init__(self, workdir: Path, tier: str, model, env=None):
        self.tier = tier
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        command = [BIN / "cassava", "serve", tier, "--model", model, "--http-port", self.http_port,
                   "--grpc-port", self.grpc_port, "--metrics-port", self.metrics_port]
        super().__init__(command, f"{self.url}/v2/models/cassava/ready", workdir / f"{tier}.log",
                         env={**os.environ, **(env or {})}, name=f"cassava serve {tier}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text


@pytest.fixture(scope="module")
def servers(tmp_path_factory, standin_model, standin_int8, no_tensorflow):  # noqa: F811
    """Both tiers at once: the cloud on the stand-in, the edge on its int8 copy (`cassava convert --model standin
    --quantize int8`) with TensorFlow unimportable."""
    workdir = tmp_path_factory.mktemp("oip")
    started = {"cloud": Served(workdir, "cloud", "standin").launch(),
               "edge": Served(workdir, "edge", standin_int8, env=no_tensorflow).launch()}
    try:
        for server in started.values():
            server.wait_ready(timeout=300)
        yield started
    finally:
        for server in started.values():
            server.stop()


@pytest.fixture(scope="module")
def photos():
    """The 27 real photos' files (the servers decode them), or two synthetic ones where ../shared is absent."""
    if REAL_PHOTOS.exists():
        from cassava.shared.data import load_samples

        return [Path(s.source).read_bytes() for s in load_samples(str(REAL_PHOTOS))]
    import io

    from PIL import Image

    files = []
    for color in ((40, 120, 30), (200, 180, 60)):
        buffer = io.BytesIO()
        Image.new("RGB", (300, 200), color).save(buffer, format="JPEG")
        files.append(buffer.getvalue())
    return files


def _photos(files, content_type="base64"):
    tensor = {"name": "photos", "datatype": "BYTES", "shape": [len(files)],
              "data": [base64.b64encode(f).decode() for f in files]}
    if content_type:
        tensor["parameters"] = {"content_type": content_type}
    return tensor


def _infer(server, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/cassava/infer", timeout=120, **kwargs,
                      **({"json": body} if not isinstance(body, bytes) else {"content": body}))


def _still_serving(server, photos):
    reply = _infer(server, {"inputs": [_photos(photos[:1])]})
    assert reply.status_code == 200, reply.text[:300]
    assert server.alive()


# ---------------------------------------------------------------- 1. requested outputs


@pytest.mark.parametrize("tier", TIERS)
def test_rest_json_answers_only_the_requested_outputs(servers, photos, tier):
    server = servers[tier]
    full = _infer(server, {"inputs": [_photos(photos[:3])]}).json()
    assert [o["name"] for o in full["outputs"]] == OUTPUTS  # none named: all three
    by_name = {o["name"]: o for o in full["outputs"]}
    for asked in (["labels"], ["probabilities", "class_ids"], ["labels", "labels"]):
        reply = _infer(server, {"inputs": [_photos(photos[:3])], "outputs": [{"name": n} for n in asked]})
        assert reply.status_code == 200, reply.text[:300]
        outputs = reply.json()["outputs"]
        assert [o["name"] for o in outputs] == list(dict.fromkeys(asked))
        assert all(o == by_name[o["name"]] for o in outputs)
    reply = _infer(server, {"inputs": [_photos(photos[:1])], "outputs": [{"name": "labels"}, {"name": "nosuch"}]})
    assert reply.status_code == 400 and "nosuch" in reply.json()["error"], reply.text[:300]


@pytest.mark.parametrize("tier", TIERS)
def test_binary_extension_answers_only_the_requested_outputs(servers, photos, tier):
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException

    server = servers[tier]
    files = np.array(photos[:3], dtype=np.object_)
    client = triton_http.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
    try:
        tensor = triton_http.InferInput("photos", [3], "BYTES")
        tensor.set_data_from_numpy(files)  # binary_data=True, its default
        full = client.infer("cassava", [tensor])
        result = client.infer("cassava", [tensor], outputs=[triton_http.InferRequestedOutput("probabilities")])
        assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities"]
        np.testing.assert_array_equal(result.as_numpy("probabilities"), full.as_numpy("probabilities"))
        with pytest.raises(InferenceServerException, match="nosuch"):
            client.infer("cassava", [tensor], outputs=[triton_http.InferRequestedOutput("nosuch")])
    finally:
        client.close()


def _grpc_infer(server, request):
    from mlserver.grpc import converters, dataplane_pb2_grpc

    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
        message = converters.ModelInferRequestConverter.from_types(request, model_name="cassava", model_version=None)
        return converters.ModelInferResponseConverter.to_types(stub.ModelInfer(message, timeout=120))


@pytest.mark.parametrize("tier", TIERS)
def test_grpc_answers_only_the_requested_outputs(servers, photos, tier):
    from mlserver.types import RequestOutput

    from cassava.shared.protocol.v2 import build_request

    request = build_request("photo", photos=photos[:2], grpc=True)
    request.outputs = [RequestOutput(name="labels")]
    assert [o.name for o in _grpc_infer(servers[tier], request).outputs] == ["labels"]
    request.outputs = [RequestOutput(name="nosuch")]
    with pytest.raises(grpc.RpcError) as error:
        _grpc_infer(servers[tier], request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "nosuch" in error.value.details()


# ---------------------------------------------------------------- 2. OIP error objects

OVERFLOW = b'{"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1180591620717411303424], "data": [0]}]}'
FAILED = [  # (case, method, path, body, status, words in the error)
    ("malformed JSON", "POST", "/v2/models/cassava/infer", b'{"inputs": [', 400, "JSON"),
    ("a JSON array, not an object", "POST", "/v2/models/cassava/infer", b"[1, 2]", 400, "object"),
    ("no inputs", "POST", "/v2/models/cassava/infer", b'{"id": "1"}', 400, "inputs"),
    # MLServer gzips an answer above 500 bytes when the client accepts it (httpx does): read, rewritten, plain
    ("twenty invalid inputs", "POST", "/v2/models/cassava/infer", {"inputs": [{"name": 1}] * 20}, 400, "inputs.0"),
    ("a shape that overflows", "POST", "/v2/models/cassava/infer", OVERFLOW, 400, "shape"),
    ("wrong method", "GET", "/v2/models/cassava/infer", None, 405, "Method Not Allowed"),
    ("wrong method on health", "POST", "/v2/health/live", b"{}", 405, "Method Not Allowed"),
    ("unknown path", "GET", "/v2/nosuch", None, 404, "Not Found"),
    ("unknown model", "POST", "/v2/models/nosuch/infer", {"inputs": []}, 404, "nosuch"),
    ("unknown model's metadata", "GET", "/v2/models/nosuch", None, 404, "nosuch"),
    ("unknown version", "GET", "/v2/models/cassava/versions/0/ready", None, 404, "not found"),
]


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("case, method, path, body, status, words", FAILED, ids=[c[0] for c in FAILED])
def test_a_failed_request_carries_the_oip_error_object(servers, photos, tier, case, method, path, body, status,
                                                       words):
    server = servers[tier]
    content = body if isinstance(body, bytes) or body is None else None
    reply = httpx.request(method, server.url + path, content=content, json=None if content or body is None else body,
                          timeout=60)
    assert reply.status_code == status, f"{case}: {reply.status_code} {reply.text[:300]}"
    assert reply.headers["content-type"] == "application/json"
    answer = reply.json()
    assert list(answer) == ["error"] and isinstance(answer["error"], str) and words in answer["error"], answer
    _still_serving(server, photos)


# ---------------------------------------------------------------- 4. health bodies


@pytest.mark.parametrize("tier", TIERS)
def test_health_answers_carry_oip_bodies(servers, tier):
    url = servers[tier].url
    expected = {"/v2/health/live": {"live": True}, "/v2/health/ready": {"ready": True},
                "/v2/models/cassava/ready": {"name": "cassava", "ready": True}}
    for path, body in expected.items():
        reply = httpx.get(url + path, timeout=10)
        assert (reply.status_code, reply.headers["content-type"], reply.json()) == (200, "application/json", body)


# ---------------------------------------------------------------- 3. metric labels


def _series(metrics: str, prefix: str = "model_infer_request_"):
    """-> [(name, {label: value})] of the samples whose name starts with `prefix`."""
    found = []
    for line in metrics.splitlines():
        match = re.match(rf"^({prefix}\w+)\{{(.*)\}} \S+$", line)
        if match:
            found.append((match[1], dict(re.findall(r'(\w+)="([^"]*)"', match[2]))))
    return found


@pytest.mark.parametrize("tier", TIERS)
def test_metric_labels_are_only_known_models_and_one_version(servers, photos, tier):
    from mlserver.grpc import converters, dataplane_pb2_grpc

    from cassava.shared.protocol.v2 import build_request

    server = servers[tier]
    one = build_request("photo", photos=photos[:1], grpc=True)
    assert _infer(server, {"inputs": []}).status_code == 400  # a failure of the known model
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
        for i in range(12):  # junk model names over both transports
            junk = httpx.post(f"{server.url}/v2/models/junk{i}/infer", json={"inputs": []}, timeout=10)
            assert junk.status_code == 404
            with pytest.raises(grpc.RpcError) as error:
                stub.ModelInfer(converters.ModelInferRequestConverter.from_types(one, model_name=f"grpc-junk{i}"),
                                timeout=10)
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
    _still_serving(server, photos)  # REST
    _grpc_infer(server, build_request("photo", photos=photos[:1], grpc=True))  # gRPC
    series = _series(server.metrics())
    assert series, "no model_infer_request_* series"
    assert {labels["model"] for _, labels in series} == {"cassava", "<unknown>"}
    versions = {labels["version"] for _, labels in series if labels["model"] == "cassava"}
    assert versions == ({_served_version(server)} if tier == "cloud" else {""})
    assert {labels["version"] for _, labels in series if labels["model"] == "<unknown>"} == {""}


def _served_version(server) -> str:
    return httpx.get(f"{server.url}/v2/models/cassava", timeout=10).json()["versions"][0]


# ---------------------------------------------------------------- 5. gRPC health, reflection, logs


@pytest.mark.parametrize("tier", TIERS)
def test_grpc_health_check_and_reflection(servers, tier):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(servers[tier].grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "live", "inference.GRPCInferenceService", "cassava"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as error:
            health.Check(health_pb2.HealthCheckRequest(service="nosuch"), timeout=10)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        database = ProtoReflectionDescriptorDatabase(channel)
        assert set(database.get_services()) == {
            "inference.GRPCInferenceService", "inference.model_repository.ModelRepositoryService",
            "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
        described = database.FindFileContainingSymbol("inference.GRPCInferenceService")
        assert "ModelInfer" in [m.name for s in described.service for m in s.method]


@pytest.mark.parametrize("tier", TIERS)
def test_grpc_client_mistakes_are_one_info_line_not_an_error_with_a_traceback(servers, tier):
    from mlserver.types import InferenceRequest, RequestInput

    server = servers[tier]
    before = len(server.log().splitlines())
    mistakes = [InferenceRequest(inputs=[RequestInput(name="image", datatype="BYTES", shape=[1], data=[b"x"])]),
                InferenceRequest(inputs=[RequestInput(name="photos", datatype="BYTES", shape=[1], data=[b"not jpeg"])])]
    for request in mistakes:
        with pytest.raises(grpc.RpcError) as error:
            _grpc_infer(server, request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    deadline = time.monotonic() + 10  # the log reaches the file through the supervisor's relay
    while True:
        lines = server.log().splitlines()[before:]
        refused = [line for line in lines if "gRPC request refused (400)" in line]
        if len(refused) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(refused) == 2 and all(" INFO " in line for line in refused), lines
    assert not [line for line in lines if "ERROR" in line or "Traceback" in line], lines


# ---------------------------------------------------------------- 6. metadata, process group, base64 photos


@pytest.mark.parametrize("tier", TIERS)
def test_server_metadata_lists_the_binary_extension_and_model_versions_match_the_answers(servers, photos, tier):
    server = servers[tier]
    assert "binary_tensor_data" in httpx.get(f"{server.url}/v2", timeout=10).json()["extensions"]
    metadata = httpx.get(f"{server.url}/v2/models/cassava", timeout=10).json()
    answered = _infer(server, {"inputs": [_photos(photos[:1])]}).json().get("model_version")
    assert (metadata.get("versions") or []) == ([answered] if answered else [])
    if tier == "cloud":
        from cassava.shared.cache import STANDIN_VERSION

        assert answered == STANDIN_VERSION
        version_ready = httpx.get(f"{server.url}/v2/models/cassava/versions/{answered}/ready", timeout=10)
        assert version_ready.json() == {"name": "cassava", "ready": True}


def _group_states(group: int) -> dict:
    """{pid: (state, command)} of the processes in process group `group` (Linux /proc)."""
    states = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if not entry.name.isdigit():
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == group:
            states[int(entry.name)] = (fields[0], stat[stat.index("(") + 1:stat.rindex(")")])
    return states


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("tier", TIERS)
def test_no_defunct_process_in_the_servers_process_group(servers, tier):
    states = _group_states(servers[tier].process.pid)
    assert len(states) >= 2, states  # the supervisor and MLServer
    assert not [pid for pid, (state, _) in states.items() if state == "Z"], states


@pytest.mark.parametrize("tier", TIERS)
def test_base64_photos_without_a_content_type_are_read_as_base64(servers, photos, tier):
    """Decided: over JSON a `photos` string is always base64 (an encoded image is not valid UTF-8 text, so no other
    reading could work); content_type "base64" is the documented form and says the same. Bad base64 is a 400 that
    names the fix."""
    server = servers[tier]
    marked = _infer(server, {"inputs": [_photos(photos[:2])]}).json()["outputs"]
    unmarked = _infer(server, {"inputs": [_photos(photos[:2], content_type=None)]}).json()["outputs"]
    assert unmarked == marked
    reply = _infer(server, {"inputs": [{"name": "photos", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]})
    assert reply.status_code == 400 and "content_type" in reply.json()["error"], reply.text[:300]


def test_mlserver_is_the_version_the_patches_were_checked_against():
    """rest.py and conformance.py patch MLServer 1.7.1's internals; the tests above check each behaviour on real
    servers. An upgrade must re-run them (and may make a patch unneeded: see conformance.py's list)."""
    import mlserver

    assert mlserver.__version__ == "1.7.1"
