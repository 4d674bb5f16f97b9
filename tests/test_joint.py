"""Joint inference with real processes: `cassava serve cloud --model standin` and `cassava serve edge --escalate-to`
in front of it, an int8 stand-in made by `cassava convert`. The threshold is chosen from the edge model's own
answers on the test images, so that some images are hard and the rest are not; which ones is known in advance.

Escalation over REST (JSON, binary extension) and gRPC for every input kind; the escalated images' answers are the
cloud's for those pixels; the cloud hung, then killed mid-run: every request answered, hard ones provisional, no
request waiting more than the timeout (plus a margin); the cloud restarted: escalation resumes, the same edge
process; a cloud that is not there at start: one warning line, provisional answers; other classes: refused.
"""
from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from helpers import LoopbackServer, free_port, run_cli

pytestmark = pytest.mark.slow
N = 16
TIMEOUT_S = 1.0  # --escalate-timeout for the escalating edge
MARGIN_S = 4.0  # a loaded 2-core machine: generous, yet far below what waiting for a dead cloud would take


@pytest.fixture(scope="module")
def int8(standin_int8) -> Path:
    return standin_int8  # the session's one conversion (conftest); tests that change it work on a copy


@pytest.fixture(scope="module")
def images(int8):
    """(uint8 pixels [N, 224, 224, 3], photo files, the edge model's own probabilities) for N stand-in images."""
    from cassava.edge.interpreter import load_tflite_classifier
    from cassava.shared.classifier import predict_pixels
    from cassava.shared.data import load_samples
    from cassava.shared.preprocess import preprocess

    photos = [Path(s.source).read_bytes() for s in load_samples("standin", N)]
    pixels = np.stack([preprocess(p, 224) for p in photos])
    return pixels, photos, predict_pixels(load_tflite_classifier(int8), pixels)


@pytest.fixture(scope="module")
def threshold(images) -> float:
    """Between the 6th and 7th lowest top probability: 6 hard images, 10 confident ones."""
    top = np.sort(images[2].max(axis=1))
    assert top[5] < top[6], "two images with the same confidence at the cut"
    return float(top[5] + top[6]) / 2


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, standin_model):
    server = LoopbackServer.serve(tmp_path_factory.mktemp("cloud"), "cloud", "standin").start(timeout=300)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def edge(tmp_path_factory, int8, cloud, threshold):
    server = LoopbackServer.serve(tmp_path_factory.mktemp("edge"), "edge", int8, "--escalate-to", cloud.url,
                    "--escalate-below", threshold, "--escalate-timeout", TIMEOUT_S,
                    "--audit-rate", 0).start(timeout=120)  # no audits: each test knows what reaches the cloud
    yield server
    server.stop()


def _hard(images, threshold) -> np.ndarray:
    return images[2].max(axis=1) < threshold


def _infer(server, wire: str, pixels, photos, grpc: bool = False):
    """-> (probabilities [N, C], answered_by list[str]) from a real request in the `wire` format."""
    from mlserver.codecs import StringCodec

    from cassava.shared.protocol.transport import make_transport
    from cassava.shared.protocol.v2 import build_request, decode_response

    transport = make_transport(server.url, "cassava", grpc=grpc, grpc_address=f"127.0.0.1:{server.grpc_port}",
                               retries=0, timeout=60)
    try:
        response = transport.infer(build_request(wire, pixels=pixels, photos=photos, grpc=grpc))
    finally:
        transport.close()
    outputs = {o.name: o for o in response.outputs}
    answered_by = [a.decode() if isinstance(a, bytes) else a for a in StringCodec.decode_output(outputs["answered_by"])]
    return decode_response(response)[1], answered_by


def _cloud_answer(cloud, pixels) -> np.ndarray:
    from cassava.shared.protocol.transport import HttpTransport
    from cassava.shared.protocol.v2 import build_request, decode_response

    transport = HttpTransport(cloud.url, retries=0, timeout=60)
    try:
        return decode_response(transport.infer(build_request("uint8", pixels=pixels)))[1]
    finally:
        transport.close()


def _metric(server, name: str, **labels) -> float:
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).text
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") and all(w in line for w in wanted))


def test_metadata_declares_answered_by_and_the_threshold(edge, threshold):
    metadata = httpx.get(f"{edge.url}/v2/models/cassava", timeout=30).json()
    assert [o["name"] for o in metadata["outputs"]] == ["class_ids", "probabilities", "labels", "answered_by"]
    assert metadata["outputs"][3] == {"name": "answered_by", "datatype": "BYTES", "shape": [-1]}
    assert float(metadata["parameters"]["escalate_below"]) == pytest.approx(threshold, rel=1e-5)


# (wire, over gRPC): payload/pixels/photos over JSON REST, raw pixels in the binary extension, photos over gRPC
WIRES = [("uint8", False), ("float32", False), ("photo", False), ("compact", False), ("binary", False),
         ("photo", True), ("compact", True)]


@pytest.mark.parametrize("wire,over_grpc", WIRES, ids=[f"{w}-{'gRPC' if g else 'REST'}" for w, g in WIRES])
def test_hard_images_are_answered_by_the_cloud_the_rest_by_the_edge(edge, cloud, images, threshold, wire, over_grpc):
    pixels, photos, edge_probabilities = images
    hard = _hard(images, threshold)
    assert 0 < hard.sum() < N
    probabilities, answered_by = _infer(edge, wire, pixels, photos, over_grpc)
    assert answered_by == ["cloud" if h else "edge" for h in hard]
    np.testing.assert_allclose(probabilities[~hard], edge_probabilities[~hard], atol=1e-6)
    cloud_probabilities = _cloud_answer(cloud, pixels[hard])  # the cloud, asked directly about those pixels
    np.testing.assert_allclose(probabilities[hard], cloud_probabilities, atol=1e-5)
    assert (probabilities[hard].argmax(1) == cloud_probabilities.argmax(1)).all()


def test_answered_by_can_be_requested_alone_or_in_any_order(edge, images, threshold):
    """OIP's requested outputs cover the edge's own output too: only what was asked, in the request's order."""
    pixels = images[0]
    hard = _hard(images, threshold)
    data = pixels.ravel().tolist()
    tensor = {"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape), "data": data}
    for asked in (["answered_by"], ["answered_by", "labels"], ["labels", "answered_by", "class_ids"]):
        reply = httpx.post(f"{edge.url}/v2/models/cassava/infer", timeout=60,
                           json={"inputs": [tensor], "outputs": [{"name": name} for name in asked]})
        assert reply.status_code == 200, reply.text[:300]
        outputs = reply.json()["outputs"]
        assert [o["name"] for o in outputs] == asked
        answered_by = next(o["data"] for o in outputs if o["name"] == "answered_by")
        assert answered_by == ["cloud" if h else "edge" for h in hard]


def test_a_batch_of_confident_images_never_reaches_the_cloud(edge, images, threshold):
    pixels, photos, _ = images
    confident = ~_hard(images, threshold)
    before = _metric(edge, "cassava_escalation_seconds_count")
    _, answered_by = _infer(edge, "uint8", pixels[confident], None)
    assert answered_by == ["edge"] * int(confident.sum())
    assert _metric(edge, "cassava_escalation_seconds_count") == before


def test_predict_records_who_answered_each_image_and_counts_the_cloud_settled_ones(edge, images, threshold, tmp_path):
    import csv

    from PIL import Image

    out = {kind: tmp_path / f"records.{kind}" for kind in ("json", "csv", "png")}
    result = run_cli("predict", "--edge", edge.url, "--data", "standin", "-n", N, "--batch-size", 5, "--quiet",
                     "--json", out["json"], "--csv", out["csv"], "--plot", out["png"], timeout=300)
    assert result.returncode == 0, result.stderr
    expected = ["cloud" if hard else "edge" for hard in _hard(images, threshold)]
    assert [r["answered_by"] for r in json.loads(out["json"].read_text())] == expected
    with open(out["csv"]) as handle:
        assert [row["answered_by"] for row in csv.DictReader(handle)] == expected
    assert f"{N} images classified" in result.stdout and "; 6 settled by the cloud" in result.stdout
    assert Image.open(out["png"]).size[0] > 0


def test_prometheus_counts_images_by_who_answered_and_escalation_latency(edge, images, threshold):
    pixels, photos, _ = images
    hard = int(_hard(images, threshold).sum())
    before = {who: _metric(edge, "cassava_answered_images_total", answered_by=who) for who in ("edge", "cloud")}
    escalations = _metric(edge, "cassava_escalation_seconds_count", outcome="answered")
    _infer(edge, "uint8", pixels, None)
    assert _metric(edge, "cassava_answered_images_total", answered_by="cloud") - before["cloud"] == hard
    assert _metric(edge, "cassava_answered_images_total", answered_by="edge") - before["edge"] == N - hard
    assert _metric(edge, "cassava_escalation_seconds_count", outcome="answered") == escalations + 1


def test_audits_measure_agreement_on_confident_images_and_photos_go_in_their_smaller_exact_form(
        tmp_path, int8, cloud, images, threshold):
    """--audit-rate 1: every confident image is also sent (in the background) and counted as agreeing or not with
    the cloud; every image sent goes as the smaller of its original file and its lossless pixels."""
    from cassava.shared.protocol.images import ImagePayloadCodec

    pixels, photos, edge_probabilities = images
    hard = _hard(images, threshold)
    server = LoopbackServer.serve(tmp_path, "edge", int8, "--escalate-to", cloud.url, "--escalate-below", threshold,
                    "--audit-rate", 1).start(timeout=120)
    try:
        _, answered_by = _infer(server, "photo", pixels, photos)
        assert answered_by == ["cloud" if h else "edge" for h in hard]  # audits change no answer
        confident = int((~hard).sum())
        deadline = time.monotonic() + 60
        while _metric(server, "cassava_audited_images_total") < confident and time.monotonic() < deadline:
            time.sleep(0.2)
        cloud_classes = _cloud_answer(cloud, pixels[~hard]).argmax(1)
        agreed = int(np.sum(cloud_classes == edge_probabilities[~hard].argmax(1)))
        assert _metric(server, "cassava_audited_images_total", agreed="true") == agreed
        assert _metric(server, "cassava_audited_images_total", agreed="false") == confident - agreed
        # ... and edge/trust.py's 95 % bounds on the same audits, beside the threshold in force (the stored one)
        from cassava.shared.bounds import lower_bound, upper_bound
        assert _metric(server, "cassava_audited_window_audits") == confident
        assert _metric(server, "cassava_audited_agreement_bound", bound="lower") == pytest.approx(
            lower_bound(agreed, confident))
        assert _metric(server, "cassava_audited_agreement_bound", bound="upper") == pytest.approx(
            upper_bound(agreed, confident))
        assert _metric(server, "cassava_escalate_below") == pytest.approx(threshold)
        assert _metric(server, "cassava_trust_protecting") == 0
        smaller = [min(len(photo), len(ImagePayloadCodec.compact(p))) for photo, p in zip(photos, pixels)]
        originals = sum(len(photo) <= len(ImagePayloadCodec.compact(p)) for photo, p in zip(photos, pixels))
        assert _metric(server, "cassava_escalation_bytes_total") == sum(smaller)
        assert _metric(server, "cassava_escalation_images_total") == N
        assert _metric(server, "cassava_escalation_images_total", form="original") == originals
        metadata = httpx.get(f"{server.url}/v2/models/cassava", timeout=30).json()
        assert float(metadata["parameters"]["audit_rate"]) == 1.0
    finally:
        server.stop()


def test_bad_input_still_gets_a_4xx(edge, images):
    bad = {"inputs": [{"name": "photos", "datatype": "BYTES", "shape": [1], "data": ["bm90IGFuIGltYWdl"],
                       "parameters": {"content_type": "base64"}}]}
    response = httpx.post(f"{edge.url}/v2/models/cassava/infer", json=bad, timeout=30)
    assert response.status_code == 400 and "not an image" in response.text
    wrong = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 8, 8, 3], "data": [0] * 192}]}
    response = httpx.post(f"{edge.url}/v2/models/cassava/infer", json=wrong, timeout=30)
    assert response.status_code == 400 and "expected images of [224, 224, 3]" in response.text
    assert _infer(edge, "uint8", images[0][:2], None)[1]  # still serving


def test_without_escalate_to_the_edge_answers_as_before(tmp_path, int8, images):
    with LoopbackServer.serve(tmp_path, "edge", int8) as plain:
        metadata = httpx.get(f"{plain.url}/v2/models/cassava", timeout=30).json()
        assert "answered_by" not in [o["name"] for o in metadata["outputs"]]
        body = httpx.post(f"{plain.url}/v2/models/cassava/infer", timeout=30, json={"inputs": [
            {"name": "pixels", "datatype": "UINT8", "shape": [1, 224, 224, 3], "data": images[0][0].ravel().tolist()}]})
        assert [o["name"] for o in body.json()["outputs"]] == ["class_ids", "probabilities", "labels"]


def test_an_unreachable_cloud_at_start_is_a_warning_and_provisional_answers(tmp_path, int8, images, threshold):
    """Also: the threshold comes from the converted model's cassava-model.json when no --escalate-below is given."""
    model = tmp_path / "int8-with-threshold"
    shutil.copytree(int8, model)
    spec = json.loads((model / "cassava-model.json").read_text())
    (model / "cassava-model.json").write_text(json.dumps({**spec, "escalate_below": threshold}))
    nowhere = f"http://127.0.0.1:{free_port()}"
    with LoopbackServer.serve(tmp_path, "edge", model, "--escalate-to", nowhere) as edge:
        hard = _hard(images, threshold)
        for wire in ("uint8", "binary"):
            _, answered_by = _infer(edge, wire, images[0], None)
            assert answered_by == ["edge-provisional" if h else "edge" for h in hard]
        warnings = [line for line in edge.log().splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and f"--escalate-to {nowhere} does not answer" in warnings[0], edge.log()
        assert "Traceback" not in edge.log()


def test_a_cloud_with_other_classes_or_no_threshold_is_refused_at_start(cloud, int8, tmp_path):
    result = run_cli("serve", "edge", "--model", int8, "--escalate-to", cloud.url, "--escalate-below", "0.5",
                     "--classes", "a,b,c,d,e,f", "--http-port", free_port(), "--grpc-port", free_port(),
                     "--metrics-port", free_port(), timeout=120)
    assert result.returncode == 2 and "classes (cbb,cbsd,cgm,cmd,healthy,unknown) differ" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    bare = shutil.copytree(int8, tmp_path / "no-threshold")  # a copy from before convert stored escalate_below
    spec = json.loads((bare / "cassava-model.json").read_text())
    spec.pop("escalate_below", None)
    (bare / "cassava-model.json").write_text(json.dumps(spec))
    result = run_cli("serve", "edge", "--model", bare, "--escalate-to", cloud.url, "--http-port", free_port(),
                     "--grpc-port", free_port(), "--metrics-port", free_port(), timeout=120)
    assert result.returncode == 2 and "pass --escalate-below P" in result.stderr


def _hammer(edge, pixels, stop: threading.Event, results: list, workers: int = 2):
    """`workers` threads posting the whole mixed batch until `stop`: (start, seconds, answered_by or error)."""
    def work():
        while not stop.is_set():
            started = time.monotonic()
            try:
                answered_by = _infer(edge, "binary", pixels, None)[1]
            except Exception as exc:  # a failed request is a result too: the test says which
                answered_by = exc
            results.append((started, time.monotonic() - started, answered_by))

    threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    return threads


def _wait_for_answers(edge, pixels, expected, timeout: float = 60.0) -> None:
    deadline, answered_by = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        answered_by = _infer(edge, "binary", pixels, None)[1]
        if answered_by == expected:
            return
        time.sleep(0.5)
    assert answered_by == expected, f"still {answered_by} after {timeout:g} s"


def test_a_hung_then_dead_cloud_never_fails_a_request_and_escalation_resumes_when_it_is_back(
        edge, cloud, images, threshold):
    """Last in this module: it stops and restarts the module's cloud."""
    pixels, hard = images[0], _hard(images, threshold)
    provisional = ["edge-provisional" if h else "edge" for h in hard]
    settled = ["cloud" if h else "edge" for h in hard]
    _wait_for_answers(edge, pixels, settled)  # escalating before the outage (a cold cloud may miss the first)
    edge_pid, stop, results = edge.process.pid, threading.Event(), []
    threads = _hammer(edge, pixels, stop, results)
    try:
        time.sleep(1.0)
        cloud.signal_group(signal.SIGSTOP)  # hung: connections open, no answer
        hung_at = time.monotonic()
        time.sleep(5.0)
        cloud.signal_group(signal.SIGKILL)  # then dead: connections refused
        cloud.process.wait(10)
        time.sleep(3.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    failures = [r for r in results if not isinstance(r[2], list)]
    assert not failures, failures[:3]
    assert all(r[2] in (settled, provisional) for r in results)
    assert max(seconds for _, seconds, _ in results) < TIMEOUT_S + MARGIN_S
    after = [r for r in results if r[0] > hung_at + TIMEOUT_S + 0.5]
    assert len(after) >= 10 and all(r[2] == provisional for r in after)
    # The breaker: a hung cloud cost the timeout once per request in flight, not once per request.
    slow = [r for r in results if r[0] >= hung_at - 1 and r[1] >= 0.9 * TIMEOUT_S]
    assert len(slow) <= 4, f"{len(slow)} requests waited for the hung cloud"

    cloud.start(timeout=300)  # back on the same ports; the edge is not restarted
    _wait_for_answers(edge, pixels, settled)
    assert edge.process.pid == edge_pid and edge.alive()
    assert _metric(edge, "cassava_answered_images_total", answered_by="edge-provisional") > 0
    assert _metric(edge, "cassava_escalation_seconds_count", outcome="failed") >= 1
