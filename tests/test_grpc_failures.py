"""The gRPC transport's failure paths against a real `mlserver start` of the shipped edge settings: a model still
loading (the server held in its loading window until the test lets it go), a deadline, a stopped server, and a
message above the server's gRPC limit; after each, the server still serves."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from cassava.shared.protocol.transport import GrpcTransport, HttpTransport, Rejected, Unavailable
from cassava.shared.protocol.v2 import build_request, decode_response
from cassava.shared.server.process import answers_ok

from helpers import REPO, LoopbackServer, free_port

pytestmark = pytest.mark.slow

# A test-only runtime beside model-settings.json (MLServer puts that folder on sys.path): the shipped edge runtime,
# whose load first waits until the test creates the file `gate`. That is the loading window, as long as the test
# needs it, with MLServer's REST and gRPC servers already answering. The shipped repository serves cassava's own
# runtimes only, so a test repository beside it (the shipped one, REST layer included) lets this one in too.
GATED_RUNTIME = '''
import asyncio
from pathlib import Path

from cassava.edge.runtime import EdgeRuntime


class GatedEdgeRuntime(EdgeRuntime):
    async def load(self) -> bool:
        gate = Path(__file__).parent / "gate"
        while not gate.exists():
            await asyncio.sleep(0.05)
        return await super().load()
'''
GATED_REPOSITORY = '''
from mlserver.repository.repository import SchemalessModelRepository

from cassava.shared.server.repository import CassavaModelRepository


class GatedRepository(CassavaModelRepository):
    async def list(self):
        return await SchemalessModelRepository.list(self)
'''
GRPC_LIMIT = 1024 * 1024  # bytes: the server's grpc_max_message_length here, so that one request can exceed it


@pytest.fixture(scope="module")
def loading(tmp_path_factory, standin_int8):
    """An edge server in its loading window: (server, open the gate)."""
    import shutil

    workdir = tmp_path_factory.mktemp("gated-edge")
    shutil.copytree(standin_int8, workdir / "model")
    (workdir / "gated_runtime.py").write_text(GATED_RUNTIME)
    (workdir / "gated_repository.py").write_text(GATED_REPOSITORY)
    model_settings = json.loads((REPO / "edge" / "model-settings.json").read_text())
    model_settings["implementation"] = "gated_runtime.GatedEdgeRuntime"
    settings = json.loads((REPO / "edge" / "settings.json").read_text())
    for key in ("host", "http_port", "grpc_port", "metrics_port"):
        settings.pop(key)
    settings["grpc_max_message_length"] = GRPC_LIMIT
    settings["model_repository_implementation"] = "gated_repository.GatedRepository"
    server = LoopbackServer.mlserver(workdir, model_settings, settings).launch()
    assert wait_until(lambda: answers_ok(f"{server.url}/v2/health/live", timeout=2), 180), server.log()[-3000:]
    yield server, lambda: (workdir / "gate").touch()
    server.stop()


def wait_until(condition, timeout: float) -> bool:
    """Poll `condition` (each poll is a real request or a count) until true or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _pixels(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 224, 224, 3), dtype=np.uint8)


def _counting(transport):
    """Count the transport's attempts (its real calls, each one request to the server)."""
    attempts = []
    real = transport._call

    def call(*args):
        attempts.append(1)
        return real(*args)

    transport._call = call
    return attempts


def test_a_model_still_loading_is_unavailable_and_retried_until_it_answers(loading):
    server, open_gate = loading
    assert server.alive() and answers_ok(f"{server.url}/v2/health/live", timeout=2)
    once = GrpcTransport(server.grpc_address, retries=0, timeout=10)
    try:
        # MLServer's ServerReady says true here (no model registered yet, so none is unready): only ModelReady tells
        assert once.model_ready() is False
        # UNAVAILABLE (compat.py; MLServer says INVALID_ARGUMENT): nothing is wrong with the request
        with pytest.raises(Unavailable, match="UNAVAILABLE: Model cassava .*is not ready yet"):
            once.infer(build_request("uint8", pixels=_pixels(1), grpc=True))
    finally:
        once.close()
    rest = HttpTransport(server.url, retries=0, timeout=10)  # REST says the same: 503 (MLServer: 400) "not ready yet"
    try:
        assert rest.model_ready() is False
        with pytest.raises(Unavailable, match="HTTP 503: Model cassava is not ready yet"):
            rest.infer(build_request("uint8", pixels=_pixels(1)))
    finally:
        rest.close()

    waits = []
    patient = GrpcTransport(server.grpc_address, retries=400, backoff_s=0.05, timeout=10)
    patient._retrying.sleep = lambda seconds: (waits.append(seconds), threading.Event().wait(0.05))
    attempts = _counting(patient)
    answer = {}

    def ask():
        answer["response"] = patient.infer(build_request("uint8", pixels=_pixels(2), grpc=True))

    asking = threading.Thread(target=ask)
    asking.start()
    try:
        assert wait_until(lambda: len(attempts) >= 3, 60)  # refused at least three times while loading
        open_gate()
        asking.join(180)
        assert not asking.is_alive()
        class_ids, probabilities, labels = decode_response(answer["response"])
        assert probabilities.shape == (2, 6) and np.allclose(probabilities.sum(1), 1.0, atol=0.02)
        assert len(attempts) >= 4 and waits[:3] == [0.05, 0.1, 0.2]  # exponential backoff between the attempts
        assert patient.ready() and patient.model_ready()
    finally:
        patient.close()


def test_a_deadline_is_unavailable_retried_and_the_server_still_serves(loading):
    server, open_gate = loading
    open_gate()
    assert wait_until(lambda: answers_ok(f"{server.url}/v2/models/cassava/ready", timeout=2), 180)
    waits = []
    hasty = GrpcTransport(server.grpc_address, retries=2, backoff_s=0.5, timeout=0.001)
    hasty._retrying.sleep = waits.append
    attempts = _counting(hasty)
    try:
        with pytest.raises(Unavailable, match=f"grpc://{server.grpc_address} ModelInfer: no answer within 0.001 s"):
            hasty.infer(build_request("uint8", pixels=_pixels(4), grpc=True))
    finally:
        hasty.close()
    assert len(attempts) == 3 and waits == [0.5, 1.0]
    _still_serves(server)


def test_a_message_above_the_grpc_limit_is_resource_exhausted_and_the_server_still_serves(loading):
    server, open_gate = loading
    open_gate()
    assert wait_until(lambda: answers_ok(f"{server.url}/v2/models/cassava/ready", timeout=2), 180)
    pixels = _pixels(8)  # 8 x 224 x 224 x 3 bytes = 1.2 MB, above the server's 1 MiB
    assert pixels.nbytes > GRPC_LIMIT
    transport = GrpcTransport(server.grpc_address, retries=3, timeout=30)
    attempts = _counting(transport)
    try:
        with pytest.raises(Rejected, match="RESOURCE_EXHAUSTED") as refused:
            transport.infer(build_request("uint8", pixels=pixels, grpc=True))
        assert refused.value.status == 8 and len(attempts) == 1  # gRPC's code 8; a refusal is never retried
        assert "larger than max" in str(refused.value)
    finally:
        transport.close()
    _still_serves(server)


def test_a_stopped_server_is_unavailable_after_every_retry():
    waits = []
    nowhere = GrpcTransport(f"127.0.0.1:{free_port()}", retries=3, backoff_s=0.2, timeout=2)
    nowhere._retrying.sleep = waits.append
    attempts = _counting(nowhere)
    try:
        assert nowhere.ready() is False and nowhere.model_ready() is False
        with pytest.raises(Unavailable, match="UNAVAILABLE"):
            nowhere.infer(build_request("uint8", pixels=_pixels(1), grpc=True))
    finally:
        nowhere.close()
    assert len(attempts) == 4 and waits == [0.2, 0.4, 0.8]


def _still_serves(server):
    """Both protocols answer a normal request afterwards, with the same probabilities."""
    pixels = _pixels(2)
    grpc_transport = GrpcTransport(server.grpc_address, retries=0, timeout=60)
    rest = HttpTransport(server.url, retries=0, timeout=60)
    try:
        over_grpc = decode_response(grpc_transport.infer(build_request("uint8", pixels=pixels, grpc=True)))
        over_rest = decode_response(rest.infer(build_request("uint8", pixels=pixels)))
    finally:
        grpc_transport.close()
        rest.close()
    np.testing.assert_allclose(over_grpc[1], over_rest[1], atol=1e-6)
    assert server.alive()

