"""Joint inference over an emulated field uplink (cassava.linkemu): real `cassava serve cloud --model standin`, a
link emulator in front of it, and `cassava serve edge --escalate-to LINK` with every image hard (`--escalate-below
1`), so each photo sent is one settlement to follow.

Over a slow link (256 kbit/s, 150 ms one way) hard photos are answered at once and settled exactly once later, with
the cloud's own answer; a request may wait for its settlement; the link blackholed (and its connections reset), then
back: nothing lost, nothing settled twice; the edge killed with -9 while its outbox holds 20 photos: all 20 settled
once after a restart.
"""
from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from cassava.linkemu import LinkEmulator, transfer_seconds

from helpers import LoopbackServer, photos_tensor

pytestmark = pytest.mark.slow
AT_ONCE_S = 1.5  # an answer that did not wait for the link: the edge's own time, on a loaded 2-core machine
SETTLE_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def photos(standin_model):
    from cassava.shared.data import load_samples

    return [Path(s.source).read_bytes() for s in load_samples("standin", 8)]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, standin_model):
    server = LoopbackServer.serve(tmp_path_factory.mktemp("cloud"), "cloud", "standin").start(timeout=300)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def link(cloud):
    emulator = LinkEmulator(cloud.http_port).start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def edge(tmp_path_factory, standin_int8, link):
    root = tmp_path_factory.mktemp("edge")
    server = LoopbackServer.serve(root, "edge", standin_int8, "--escalate-to", link.url, "--escalate-below", 1,
                    "--audit-rate", 0, "--outbox", root / "outbox").start(timeout=120)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def lan(link):
    link.set(None, 0)
    link.blackhole(False)
    yield


def _post(edge, photo: bytes, wait_s=None):
    """One photo, one request. -> (seconds, answered_by, settlement id)."""
    body = {"inputs": [photos_tensor([photo])]}
    if wait_s is not None:
        body["parameters"] = {"settle_wait_s": wait_s}
    started = time.monotonic()
    reply = httpx.post(f"{edge.url}/v2/models/cassava/infer", json=body, timeout=60)
    seconds = time.monotonic() - started
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    answered_by = next(o["data"] for o in answer["outputs"] if o["name"] == "answered_by")
    return seconds, answered_by[0], answer["parameters"]["settlement_ids"]


def _settlement(edge, settlement_id: str) -> httpx.Response:
    return httpx.get(f"{edge.url}/v2/models/cassava/settlements/{settlement_id}", timeout=10)


def _all_settled(edge, ids, timeout: float = SETTLE_TIMEOUT_S) -> list:
    deadline, records = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        records = [_settlement(edge, i).json() for i in ids]
        if all(r.get("status") == "settled" for r in records):
            return records
        time.sleep(0.5)
    raise AssertionError(f"not settled after {timeout:g} s: {[r.get('status') for r in records]}")


def _metric(server, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in server.metrics().splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def _cloud_label(cloud, photo: bytes) -> str:
    reply = httpx.post(f"{cloud.url}/v2/models/cassava/infer", json={"inputs": [photos_tensor([photo])]}, timeout=60)
    return next(o["data"] for o in reply.json()["outputs"] if o["name"] == "labels")[0]


def test_the_emulated_link_carries_bytes_at_its_rate_and_delay(link):
    link.set(256, 150)
    started = time.monotonic()
    httpx.get(f"{link.url}/v2/health/ready", timeout=30)
    assert time.monotonic() - started >= 0.3  # there and back
    body = b"x" * 64_000
    started = time.monotonic()
    reply = httpx.post(f"{link.url}/v2/models/cassava/infer", content=body, timeout=60,
                       headers={"content-type": "application/json"})
    assert reply.status_code == 400  # not JSON: the cloud said so, after the whole body crossed the link
    assert time.monotonic() - started >= 0.9 * transfer_seconds(len(body), 256, 150)


def test_over_a_slow_link_hard_photos_are_answered_at_once_and_settled_once_later(edge, cloud, link, photos):
    link.set(256, 150)
    settled_before, duplicates_before = _metric(edge, "cassava_settled_images_total"), \
        _metric(edge, "cassava_duplicate_settlements_total")
    answers = [_post(edge, photo, wait_s=0) for photo in photos[:4]]
    assert all(seconds < AT_ONCE_S for seconds, _, _ in answers), answers
    assert [a for _, a, _ in answers] == ["edge-provisional"] * 4
    ids = [i for _, _, i in answers]
    assert len(set(ids)) == 4 and all(len(i) >= 20 for i in ids)
    assert _settlement(edge, ids[0]).json()["status"] in ("pending", "settled")
    records = _all_settled(edge, ids)
    assert [r["answered_by"] for r in records] == ["cloud"] * 4
    assert [r["prediction"] for r in records] == [_cloud_label(cloud, p) for p in photos[:4]]
    assert all(r["edge"]["prediction"] and r["settle_seconds"] > 0 for r in records)
    assert _metric(edge, "cassava_settled_images_total") - settled_before == 4
    assert _metric(edge, "cassava_duplicate_settlements_total") == duplicates_before
    assert _metric(edge, "cassava_outbox_images") == 0
    assert _metric(edge, "cassava_settle_seconds_count") >= 4


def test_a_request_may_wait_for_its_settlement_and_the_extension_is_listed(edge, photos):
    seconds, answered_by, settlement_id = _post(edge, photos[0], wait_s=30)  # LAN: settled within the request
    assert answered_by == "cloud"
    assert _settlement(edge, settlement_id).json()["status"] == "settled"
    assert "settlements" in httpx.get(f"{edge.url}/v2", timeout=10).json()["extensions"]
    unknown = _settlement(edge, "no-such-settlement-id")
    assert unknown.status_code == 404 and "no settlement" in unknown.json()["error"]
    bad = httpx.post(f"{edge.url}/v2/models/cassava/infer", timeout=30,
                     json={"inputs": [photos_tensor([photos[0]])], "parameters": {"settle_wait_s": -1}})
    assert bad.status_code == 400 and "settle_wait_s" in bad.json()["error"]


def test_a_blackholed_link_then_back_loses_nothing_and_settles_nothing_twice(edge, link, photos):
    settled_before = _metric(edge, "cassava_settled_images_total")
    link.blackhole(True)
    answers = [_post(edge, photo, wait_s=0) for photo in photos[:5]]
    waited = _post(edge, photos[5])  # the default budget (2 s): it waits for nothing longer than that
    assert waited[0] < 2.0 + AT_ONCE_S and waited[1] == "edge-provisional"
    answers.append(waited)
    assert all(seconds < AT_ONCE_S for seconds, _, _ in answers[:5])
    time.sleep(4)
    link.reset()  # the modem re-attaches: every connection through the link is reset
    time.sleep(2)
    assert all(_settlement(edge, i).json()["status"] == "pending" for _, _, i in answers)
    link.blackhole(False)
    records = _all_settled(edge, [i for _, _, i in answers])
    assert len(records) == 6
    assert _metric(edge, "cassava_settled_images_total") - settled_before == 6
    assert _metric(edge, "cassava_outbox_images") == 0


def test_predict_settle_wait_records_the_final_answer_and_the_edge_own(edge, cloud, link, photos, tmp_path):
    import json

    from helpers import run_cli

    link.set(256, 150)
    out = tmp_path / "records.json"
    result = run_cli("predict", "--edge", edge.url, "--data", "standin", "-n", 4, "--batch-size", 1, "--quiet",
                     "--json", out, "--csv", tmp_path / "records.csv", "--settle-wait", 90, timeout=300)
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    assert [r["answered_by"] for r in records] == ["cloud"] * 4, records
    assert [r["prediction"] for r in records] == [_cloud_label(cloud, p) for p in photos[:4]]
    later = [r for r in records if r["edge_answered_by"] == "edge-provisional"]
    assert later and all(r["edge_prediction"] and r["settlement_id"] for r in later)
    assert "; 4 settled by the cloud" in result.stdout and f"({len(later)} of them after the run)" in result.stdout
    assert "edge_prediction" in (tmp_path / "records.csv").read_text().splitlines()[0]
    refused = run_cli("predict", "--local", cloud.url, "--data", "standin", "-n", 1, "--settle-wait", 5)
    assert refused.returncode == 2 and "--settle-wait" in refused.stderr


def test_an_edge_started_before_its_cloud_finds_it_within_a_probe_interval(tmp_path, cloud, standin_int8, photos):
    """The readiness probe runs from start while the breaker is open: the cloud appears (here: the link starts
    leading to it) and within one probe interval (3 s) plus a margin hard photos are settled within the request."""
    from helpers import free_port

    link = LinkEmulator(free_port()).start()  # leads nowhere yet: every connection through it fails
    try:
        with LoopbackServer.serve(tmp_path, "edge", standin_int8, "--escalate-to", link.url, "--escalate-below", 1,
                    "--audit-rate", 0, "--outbox", tmp_path / "outbox") as edge:
            assert _post(edge, photos[0], wait_s=5)[1] == "edge-provisional"
            time.sleep(4)  # the edge has been up, and its cloud absent, for a while
            link.target = ("127.0.0.1", cloud.http_port)  # the cloud is there now
            appeared, answered_by = time.monotonic(), None
            while time.monotonic() - appeared < 20 and answered_by != "cloud":
                answered_by = _post(edge, photos[1], wait_s=5)[1]
                time.sleep(0.2)
            assert answered_by == "cloud"
            assert time.monotonic() - appeared < 3.0 + 4.0  # one probe interval and a loaded machine's margin
    finally:
        link.stop()


class NonsenseCloud:
    """A real HTTP server that says it serves the cloud's model (its metadata, copied from the real cloud) and answers
    every inference in valid V2, but not usably: other class names, or rows that are not probabilities."""

    def __init__(self, metadata: dict):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self
        self.mode, self.answers = "other-classes", 0

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status, content):
                body = json.dumps(content).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._send(200, metadata if self.path == "/v2/models/cassava" else {"ready": True})

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["content-length"])))
                n, c = request["inputs"][0]["shape"][0], len(metadata["parameters"]["class_names"].split(","))
                rows = [[1.0 / c] * c for _ in range(n)]
                labels = ["not-a-class"] * n
                if outer.mode == "not-probabilities":
                    rows, labels = [[5.0] * c for _ in range(n)], [metadata["parameters"]["class_names"]
                                                                   .split(",")[0]] * n
                outer.answers += 1
                self._send(200, {"model_name": "cassava", "outputs": [
                    {"name": "class_ids", "datatype": "INT64", "shape": [n], "data": [0] * n},
                    {"name": "probabilities", "datatype": "FP32", "shape": [n, c], "data": sum(rows, [])},
                    {"name": "labels", "datatype": "BYTES", "shape": [n], "data": labels}]})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def _final(edge, settlement_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = _settlement(edge, settlement_id).json()
        if record.get("status") in ("settled", "provisional"):
            return record
        time.sleep(0.3)
    raise AssertionError(f"{settlement_id} still {record.get('status')} after {timeout:g} s")


def test_a_cloud_answering_nonsense_keeps_the_edge_answer_and_counts_it(tmp_path, cloud, standin_int8, photos):
    nonsense = NonsenseCloud(httpx.get(f"{cloud.url}/v2/models/cassava", timeout=10).json())
    try:
        with LoopbackServer.serve(tmp_path, "edge", standin_int8, "--escalate-to", nonsense.url, "--escalate-below", 1,
                    "--audit-rate", 0, "--outbox", tmp_path / "outbox") as edge:
            for mode in ("other-classes", "not-probabilities"):
                nonsense.mode = mode
                _, answered_by, settlement_id = _post(edge, photos[0], wait_s=10)
                assert answered_by == "edge-provisional"
                record = _final(edge, settlement_id)
                assert record["status"] == "provisional" and "unusable" in record["reason"]
                assert record["prediction"] == record["edge"]["prediction"]
            text = edge.metrics()
            for mode in ("other-classes", "not-probabilities"):
                assert f'reason="{mode}"}} 1.0' in text, text[-2000:]
            assert _metric(edge, "cassava_settled_images_total") == 0
            assert _metric(edge, "cassava_outbox_images") == 0  # not retried forever
            assert nonsense.answers == 2
            assert _post(edge, photos[1], wait_s=0)[1] == "edge-provisional"  # still serving
    finally:
        nonsense.stop()


def test_an_edge_killed_with_entries_in_its_outbox_settles_them_all_once_after_restart(edge, link, photos):
    """Last: it kills and restarts the module's edge."""
    link.blackhole(True)
    ids = [_post(edge, photos[i % len(photos)], wait_s=0)[2] for i in range(20)]
    assert _metric(edge, "cassava_outbox_images") == 20
    edge.kill()
    edge.start(timeout=120)  # the same ports and --outbox
    link.blackhole(False)
    records = _all_settled(edge, ids)
    assert len({r["id"] for r in records}) == 20
    assert _metric(edge, "cassava_settled_images_total") == 20  # this process settled exactly these
    assert _metric(edge, "cassava_duplicate_settlements_total") == 0
    assert _metric(edge, "cassava_outbox_images") == 0
    assert "Traceback" not in edge.log()
