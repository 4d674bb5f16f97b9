"""Nobody on the farm's network can take a node down (docs/threat-model.md), on real servers over loopback:

  model control   the repository API (REST /v2/repository/..., gRPC RepositoryIndex/Load/Unload on both services)
                  refused on both tiers by default, the model still ready after; opened by `--model-control
                  loopback` or `token:FILE` (gRPC: the same, with the token in metadata);
  slow clients    400 connections sending their headers slowly are closed at the header timeout while normal requests
                  are answered; a silent body, an idle keep-alive connection and a silent gRPC connection are cut at
                  theirs; one source's connections above its cap are closed at once;
  fair share      a greedy client gets 429 with Retry-After (gRPC RESOURCE_EXHAUSTED), never a 5xx, while four normal
                  clients get every answer; refusals are counted in Prometheus.
Distinct clients are distinct loopback source addresses (127.0.0.2, ...): all of 127/8 is this machine's loopback.
Latency ratios are measured by benchmarks/bench_guard.py, not asserted here.
"""
from __future__ import annotations

import asyncio
import json
import re
import time

import grpc
import httpx
import pytest

from cassava.shared.server.guard import GuardSettings

from helpers import REPO, LoopbackServer, all_running, photos_tensor

pytestmark = pytest.mark.slow
TOKEN = "s3cret-token-for-model-control"
EDGE = GuardSettings.from_args(json.loads((REPO / "edge" / "settings.json").read_text())
                               ["model_repository_implementation_args"], environ={})


@pytest.fixture(scope="module")
def opened(tmp_path_factory, standin_int8):
    """Edge servers with model control opened: {"loopback": ..., "token": ...}; the token one also limits every
    client, 127.0.0.1 included, to one request working and none waiting (set through the environment)."""
    root = tmp_path_factory.mktemp("guard")
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    yield from all_running({
        "loopback": LoopbackServer.serve(root, "edge", standin_int8, "--model-control", "loopback"),
        "token": LoopbackServer.serve(root / "t", "edge", standin_int8, "--model-control", f"token:{token_file}",
                        env={"CASSAVA_REQUESTS_PER_CLIENT": "1", "CASSAVA_QUEUED_PER_CLIENT": "0",
                             "CASSAVA_EXEMPT_CLIENTS": "none"}),
    }, timeout=300)


def _ready(server) -> bool:
    return httpx.get(f"{server.url}/v2/models/cassava/ready", timeout=10).status_code == 200


def _grpc_stubs(channel):
    from mlserver.grpc import dataplane_pb2_grpc, model_repository_pb2_grpc

    return (dataplane_pb2_grpc.GRPCInferenceServiceStub(channel),
            model_repository_pb2_grpc.ModelRepositoryServiceStub(channel))


def _grpc_repository_calls(stub, metadata=None):
    """Index, Load and Unload of `cassava` on one service's stub (both services share the message types' names)."""
    from mlserver.grpc import dataplane_pb2, model_repository_pb2

    pb = model_repository_pb2 if type(stub).__name__ == "ModelRepositoryServiceStub" else dataplane_pb2
    return [("index", lambda: stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10, metadata=metadata)),
            ("load", lambda: stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="cassava"), timeout=30,
                                                      metadata=metadata)),
            ("unload", lambda: stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="cassava"),
                                                          timeout=30, metadata=metadata))]


# ---------------------------------------------------------------- model control


@pytest.mark.parametrize("tier", ["cloud", "edge"])
def test_the_repository_api_is_refused_by_default_and_the_model_stays_ready(standin_servers, tier):
    server = standin_servers[tier]
    for method, path in (("POST", "/v2/repository/models/cassava/unload"), ("POST", "/v2/repository/index"),
                         ("POST", "/v2/repository/models/cassava/load"), ("GET", "/v2/repository/index")):
        reply = httpx.request(method, server.url + path, json={}, timeout=30)
        assert reply.status_code == 403, (path, reply.status_code, reply.text)
        assert list(reply.json()) == ["error"] and "model repository API refused" in reply.json()["error"]
    with grpc.insecure_channel(server.grpc_address) as channel:
        for stub in _grpc_stubs(channel):
            for name, call in _grpc_repository_calls(stub):
                with pytest.raises(grpc.RpcError) as error:
                    call()
                assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED, (type(stub).__name__, name)
    assert _ready(server)
    assert 'cassava_guard_refused_total{protocol="grpc",reason="model_control"}' in server.metrics()


def test_loopback_model_control_lets_this_machine_unload_and_load(opened):
    server = opened["loopback"]
    reply = httpx.post(f"{server.url}/v2/repository/models/cassava/unload", timeout=60)
    assert reply.status_code == 200, reply.text
    assert not _ready(server)
    reply = httpx.post(f"{server.url}/v2/repository/models/cassava/load", timeout=120)
    assert reply.status_code == 200, reply.text
    assert _ready(server)
    with grpc.insecure_channel(server.grpc_address) as channel:
        index = _grpc_repository_calls(_grpc_stubs(channel)[0])[0][1]()
        assert [m.name for m in index.models] == ["cassava"]


def test_token_model_control_needs_the_token(opened):
    server = opened["token"]
    url = f"{server.url}/v2/repository/index"
    assert httpx.post(url, json={}, timeout=10).status_code == 403
    assert httpx.post(url, json={}, headers={"Authorization": "Bearer wrong-token-wrong-token"}, timeout=10
                      ).status_code == 403
    reply = httpx.post(url, json={}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert reply.status_code == 200 and reply.json()[0]["name"] == "cassava", reply.text
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = _grpc_stubs(channel)[0]
        with pytest.raises(grpc.RpcError) as error:
            _grpc_repository_calls(stub)[0][1]()
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        index = _grpc_repository_calls(stub, metadata=[("authorization", f"Bearer {TOKEN}")])[0][1]()
        assert [m.name for m in index.models] == ["cassava"]
    assert _ready(server)


def test_a_bad_model_control_setting_is_one_line_and_exit_2(tmp_path, standin_int8):
    from helpers import run_cli

    (tmp_path / "short").write_text("abc\n")
    for value, words in (("open", "use closed, loopback or token:FILE"),
                         (f"token:{tmp_path / 'short'}", "at least 16 characters"),
                         (f"token:{tmp_path / 'absent'}", "at least 16 characters")):
        result = run_cli("serve", "edge", "--model", standin_int8, "--model-control", value, timeout=120)
        assert result.returncode == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
            result.stderr


# ---------------------------------------------------------------- slow and greedy clients


async def _slow_headers(server, source: str, results: list, drip_s: float = 2.0):
    """A connection from `source` sending a request's headers one line every `drip_s`, never finishing: appends
    the seconds until the server closed it (None if it never did within the test)."""
    opened = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port, local_addr=(source, 0))
    writer.write(b"POST /v2/models/cassava/infer HTTP/1.1\r\nHost: pi\r\n")
    closed_at = None
    try:
        for i in range(20):
            try:
                data = await asyncio.wait_for(reader.read(4096), timeout=drip_s)
            except asyncio.TimeoutError:
                writer.write(b"X-Slow-%d: y\r\n" % i)
                continue
            if not data or data.startswith(b"HTTP/1.1 408"):
                closed_at = time.monotonic() - opened
                break
    except (ConnectionError, OSError):
        closed_at = time.monotonic() - opened
    finally:
        writer.close()
    results.append(closed_at)


async def _normal_requests(server, body: dict, until: float, statuses: list, source: str = "127.0.0.1"):
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(transport=transport, timeout=60) as client:
        while time.monotonic() < until:
            reply = await client.post(f"{server.url}/v2/models/cassava/infer", json=body)
            statuses.append(reply.status_code)
            await asyncio.sleep(0.2)


def test_slow_header_connections_are_closed_at_the_header_timeout_while_others_are_served(standin_servers,
                                                                                          photo_files):
    server = standin_servers["edge"]
    body = {"inputs": [photos_tensor(photo_files[:1])]}
    closed, statuses = [], []
    limit = EDGE.header_timeout_s

    async def run():
        sources = [f"127.0.0.{2 + i // 50}" for i in range(400)]  # 8 clients x 50: under the per-client cap
        slow = [asyncio.create_task(_slow_headers(server, source, closed)) for source in sources]
        await asyncio.sleep(1.0)
        await _normal_requests(server, body, time.monotonic() + limit + 2, statuses)
        await asyncio.gather(*slow)

    asyncio.run(run())
    assert len(closed) == 400
    in_time = [t for t in closed if t is not None and t <= limit + 3]
    assert len(in_time) >= 360, sorted(t if t is not None else -1 for t in closed)[::20]
    assert min(t for t in closed if t is not None) >= limit - 1  # held until the timeout, not refused at once
    assert statuses and set(statuses) == {200}, statuses
    assert re.search(r'cassava_guard_refused_total\{protocol="rest",reason="headers_timeout"\} [1-9]',
                     server.metrics())


async def _closed_after(reader, limit: float):
    """Seconds until the server closes the connection (reading and discarding what it sends), None after `limit`."""
    start = time.monotonic()
    try:
        while time.monotonic() - start < limit:
            data = await asyncio.wait_for(reader.read(65536), timeout=limit)
            if not data:
                return time.monotonic() - start
    except (asyncio.TimeoutError, ConnectionError, OSError):
        pass
    return None if time.monotonic() - start >= limit else time.monotonic() - start


def test_a_silent_body_an_idle_keep_alive_and_a_silent_grpc_connection_are_cut(standin_servers, photo_files):
    server = standin_servers["edge"]

    async def silent_body():
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port, local_addr=("127.0.0.40", 0))
        writer.write(b"POST /v2/models/cassava/infer HTTP/1.1\r\nHost: pi\r\ncontent-type: application/json\r\n"
                     b"content-length: 100000\r\n\r\n" + b" " * 1000)  # then nothing
        await writer.drain()
        return await _closed_after(reader, EDGE.body_timeout_s + 10)

    async def idle_keep_alive():
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port, local_addr=("127.0.0.41", 0))
        writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: pi\r\n\r\n")
        await writer.drain()
        answer = await reader.readuntil(b"}")
        assert answer.startswith(b"HTTP/1.1 200"), answer
        return await _closed_after(reader, EDGE.keep_alive_s + 10)

    async def silent_grpc():
        reader, _ = await asyncio.open_connection("127.0.0.1", server.grpc_port, local_addr=("127.0.0.42", 0))
        return await _closed_after(reader, EDGE.header_timeout_s + 10)

    async def run():
        return await asyncio.gather(silent_body(), idle_keep_alive(), silent_grpc())

    body, idle, grpc_silent = asyncio.run(run())
    assert body is not None and EDGE.body_timeout_s - 1 <= body <= EDGE.body_timeout_s + 3, body
    assert idle is not None and EDGE.keep_alive_s - 1 <= idle <= EDGE.keep_alive_s + 3, idle
    assert grpc_silent is not None and grpc_silent <= EDGE.header_timeout_s + 3, grpc_silent
    assert re.search(r'cassava_guard_refused_total\{protocol="rest",reason="body_timeout"\} [1-9]', server.metrics())
    assert httpx.post(f"{server.url}/v2/models/cassava/infer", json={"inputs": [photos_tensor(photo_files[:1])]},
                      timeout=60).status_code == 200


def test_one_clients_connections_above_its_cap_are_closed_at_once(standin_servers):
    server = standin_servers["edge"]
    cap = EDGE.connections_per_client
    closed = []

    async def run():
        tasks = [asyncio.create_task(_slow_headers(server, "127.0.0.20", closed, drip_s=1.0)) for _ in range(cap + 36)]
        await asyncio.gather(*tasks)

    asyncio.run(run())
    at_once = [t for t in closed if t is not None and t < 2.5]
    assert len(at_once) >= 36, sorted(t if t is not None else -1 for t in closed)
    assert len([t for t in closed if t is not None and t >= EDGE.header_timeout_s - 1]) >= cap - 4


def test_a_greedy_client_gets_429_never_5xx_and_normal_clients_every_answer(standin_servers, photo_files):
    server = standin_servers["edge"]
    body = {"inputs": [photos_tensor(photo_files[:1])]}
    normal, greedy, retry_after = [], [], set()

    async def greedy_loop(client, until):
        while time.monotonic() < until:
            reply = await client.post(f"{server.url}/v2/models/cassava/infer", json=body)
            greedy.append(reply.status_code)
            if reply.status_code == 429:
                retry_after.add(reply.headers.get("retry-after"))
                assert list(reply.json()) == ["error"] and "at most 1 working and 3 waiting" in reply.json()["error"]

    async def run():
        until = time.monotonic() + 12
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.30", limits=httpx.Limits(max_connections=40))
        async with httpx.AsyncClient(transport=transport, timeout=60) as client:
            normals = [_normal_requests(server, body, until, normal, f"127.0.0.{31 + i}") for i in range(4)]
            await asyncio.gather(*[greedy_loop(client, until) for _ in range(20)], *normals)

    asyncio.run(run())
    assert normal and set(normal) == {200}, normal
    assert set(greedy) == {200, 429}, sorted(set(greedy))
    assert retry_after == {"1"}
    assert re.search(r'cassava_guard_refused_total\{protocol="rest",reason="fair_share"\} [1-9]', server.metrics())


def test_grpc_fair_share_is_resource_exhausted(opened, photo_files):
    from concurrent.futures import ThreadPoolExecutor

    from mlserver.grpc import converters

    from cassava.shared.protocol.v2 import build_request

    server = opened["token"]  # one request at a time per client, this machine included
    request = converters.ModelInferRequestConverter.from_types(
        build_request("photo", photos=photo_files[:4], grpc=True), model_name="cassava")
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = _grpc_stubs(channel)[0]

        def call(_):
            try:
                stub.ModelInfer(request, timeout=60)
                return "OK"
            except grpc.RpcError as error:
                return error.code().name

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(call, range(48)))
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert 'cassava_guard_refused_total{protocol="grpc",reason="fair_share"}' in server.metrics()
