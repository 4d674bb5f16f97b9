"""Open Inference Protocol conformance of both tiers, as `cassava serve` runs them (stand-in models): requested
outputs, OIP error objects and health bodies, bounded metric labels, gRPC health and reflection, quiet logs for
clients' mistakes, metadata that matches the answers, no zombie in the server's process group, and the decision on
base64 `photos` without a content_type. The behaviours MLServer itself gets wrong are put right in
shared/server/rest.py and shared/server/compat.py; these tests fail if an MLServer upgrade moves them.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from helpers import infer_json, photos_tensor, served_version

pytestmark = pytest.mark.slow
TIERS = ("cloud", "edge")
OUTPUTS = ["class_ids", "probabilities", "labels"]


def _still_serving(server, photo_files):
    reply = infer_json(server, {"inputs": [photos_tensor(photo_files[:1])]})
    assert reply.status_code == 200, reply.text[:300]
    assert server.alive()


# ---------------------------------------------------------------- 1. requested outputs


@pytest.mark.parametrize("tier", TIERS)
def test_rest_json_answers_only_the_requested_outputs(standin_servers, photo_files, tier):
    server = standin_servers[tier]
    full = infer_json(server, {"inputs": [photos_tensor(photo_files[:3])]}).json()
    assert [o["name"] for o in full["outputs"]] == OUTPUTS  # none named: all three
    by_name = {o["name"]: o for o in full["outputs"]}
    for asked in (["labels"], ["probabilities", "class_ids"], ["labels", "labels"]):
        reply = infer_json(server, {"inputs": [photos_tensor(photo_files[:3])],
                                    "outputs": [{"name": n} for n in asked]})
        assert reply.status_code == 200, reply.text[:300]
        outputs = reply.json()["outputs"]
        assert [o["name"] for o in outputs] == list(dict.fromkeys(asked))
        assert all(o == by_name[o["name"]] for o in outputs)
    reply = infer_json(server, {"inputs": [photos_tensor(photo_files[:1])],
                                "outputs": [{"name": "labels"}, {"name": "nosuch"}]})
    assert reply.status_code == 400 and "nosuch" in reply.json()["error"], reply.text[:300]


@pytest.mark.parametrize("tier", TIERS)
def test_binary_extension_answers_only_the_requested_outputs(standin_servers, photo_files, tier):
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException

    server = standin_servers[tier]
    files = np.array(photo_files[:3], dtype=np.object_)
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
def test_grpc_answers_only_the_requested_outputs(standin_servers, photo_files, tier):
    from mlserver.types import RequestOutput

    from cassava.shared.protocol.v2 import build_request

    request = build_request("photo", photos=photo_files[:2], grpc=True)
    request.outputs = [RequestOutput(name="labels")]
    assert [o.name for o in _grpc_infer(standin_servers[tier], request).outputs] == ["labels"]
    request.outputs = [RequestOutput(name="nosuch")]
    with pytest.raises(grpc.RpcError) as error:
        _grpc_infer(standin_servers[tier], request)
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
def test_a_failed_request_carries_the_oip_error_object(standin_servers, photo_files, tier, case, method, path, body,
                                                       status, words):
    server = standin_servers[tier]
    content = body if isinstance(body, bytes) or body is None else None
    reply = httpx.request(method, server.url + path, content=content, json=None if content or body is None else body,
                          timeout=60)
    assert reply.status_code == status, f"{case}: {reply.status_code} {reply.text[:300]}"
    assert reply.headers["content-type"] == "application/json"
    answer = reply.json()
    assert list(answer) == ["error"] and isinstance(answer["error"], str) and words in answer["error"], answer
    _still_serving(server, photo_files)


# ---------------------------------------------------------------- 4. health bodies


@pytest.mark.parametrize("tier", TIERS)
def test_health_answers_carry_oip_bodies(standin_servers, tier):
    url = standin_servers[tier].url
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
def test_metric_labels_are_only_known_models_and_one_version(standin_servers, photo_files, tier):
    from mlserver.grpc import converters, dataplane_pb2_grpc

    from cassava.shared.protocol.v2 import build_request

    server = standin_servers[tier]
    one = build_request("photo", photos=photo_files[:1], grpc=True)
    assert infer_json(server, {"inputs": []}).status_code == 400  # a failure of the known model
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
        for i in range(12):  # junk model names over both transports
            junk = httpx.post(f"{server.url}/v2/models/junk{i}/infer", json={"inputs": []}, timeout=10)
            assert junk.status_code == 404
            with pytest.raises(grpc.RpcError) as error:
                stub.ModelInfer(converters.ModelInferRequestConverter.from_types(one, model_name=f"grpc-junk{i}"),
                                timeout=10)
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
    _still_serving(server, photo_files)  # REST
    _grpc_infer(server, build_request("photo", photos=photo_files[:1], grpc=True))  # gRPC
    series = _series(server.metrics())
    assert series, "no model_infer_request_* series"
    assert {labels["model"] for _, labels in series} == {"cassava", "<unknown>"}
    versions = {labels["version"] for _, labels in series if labels["model"] == "cassava"}
    assert versions == ({served_version(server)} if tier == "cloud" else {""})
    assert {labels["version"] for _, labels in series if labels["model"] == "<unknown>"} == {""}


# ---------------------------------------------------------------- 5. gRPC health, reflection, logs


@pytest.mark.parametrize("tier", TIERS)
def test_grpc_health_check_and_reflection(standin_servers, tier):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(standin_servers[tier].grpc_address) as channel:
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
def test_grpc_errors_carry_the_code_rest_gives(standin_servers, tier):
    """MLServer's ModelReady has no error handler (UNKNOWN: Unexpected <class ModelNotFound>); compat.py maps every
    MLServerError as REST does: 404 NOT_FOUND, 403 PERMISSION_DENIED (the repository API, closed by default)."""
    from mlserver.grpc import dataplane_pb2, dataplane_pb2_grpc

    server = standin_servers[tier]
    assert httpx.get(f"{server.url}/v2/models/nosuch/ready", timeout=10).status_code == 404
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
        for call in (lambda: stub.ModelReady(dataplane_pb2.ModelReadyRequest(name="nosuch"), timeout=10),
                     lambda: stub.ModelMetadata(dataplane_pb2.ModelMetadataRequest(name="nosuch"), timeout=10)):
            with pytest.raises(grpc.RpcError) as error:
                call()
            assert error.value.code() == grpc.StatusCode.NOT_FOUND and "nosuch" in error.value.details()
        with pytest.raises(grpc.RpcError) as error:
            stub.RepositoryModelUnload(dataplane_pb2.RepositoryModelUnloadRequest(model_name="cassava"), timeout=10)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert stub.ModelReady(dataplane_pb2.ModelReadyRequest(name="cassava"), timeout=10).ready


@pytest.mark.parametrize("tier", TIERS)
def test_grpc_health_watch_streams_the_models_status(standin_servers, tier):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(standin_servers[tier].grpc_address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="cassava"), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()


@pytest.mark.parametrize("tier", TIERS)
def test_grpc_client_mistakes_are_one_info_line_not_an_error_with_a_traceback(standin_servers, tier):
    from mlserver.types import InferenceRequest, RequestInput

    server = standin_servers[tier]
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
def test_server_metadata_lists_the_binary_extension_and_model_versions_match_the_answers(standin_servers, photo_files,
                                                                                         tier):
    server = standin_servers[tier]
    assert "binary_tensor_data" in httpx.get(f"{server.url}/v2", timeout=10).json()["extensions"]
    metadata = httpx.get(f"{server.url}/v2/models/cassava", timeout=10).json()
    answered = infer_json(server, {"inputs": [photos_tensor(photo_files[:1])]}).json().get("model_version")
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
def test_no_defunct_process_in_the_servers_process_group(standin_servers, tier):
    states = _group_states(standin_servers[tier].process.pid)
    assert len(states) >= 2, states  # the supervisor and MLServer
    assert not [pid for pid, (state, _) in states.items() if state == "Z"], states


@pytest.mark.parametrize("tier", TIERS)
def test_base64_photos_without_a_content_type_are_read_as_base64(standin_servers, photo_files, tier):
    """Decided: over JSON a `photos` string is always base64 (an encoded image is not valid UTF-8 text, so no other
    reading could work); content_type "base64" is the documented form and says the same. Bad base64 is a 400 that
    names the fix."""
    server = standin_servers[tier]
    marked = infer_json(server, {"inputs": [photos_tensor(photo_files[:2])]}).json()["outputs"]
    unmarked = infer_json(server, {"inputs": [photos_tensor(photo_files[:2], content_type=None)]}).json()["outputs"]
    assert unmarked == marked
    reply = infer_json(server, {"inputs": [{"name": "photos", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]})
    assert reply.status_code == 400 and "content_type" in reply.json()["error"], reply.text[:300]


def test_mlserver_is_the_version_the_patches_were_checked_against():
    """compat.py patches MLServer 1.7.1's internals (and refuses any other version); the tests above check each
    behaviour on real servers. An upgrade must re-run them (and may make a patch unneeded: see compat.py's list)."""
    import mlserver

    assert mlserver.__version__ == "1.7.1"
