"""The client against real servers on 127.0.0.1: --local (cloud), --edge, --remote through a real nginx playing the
Seldon ingress in front of two replicas (one killed mid-run), --auto failover edge -> cloud and back; 4xx never
retried; bad URLs one line and exit 2. Every server is a real `mlserver start` process on the stand-in model.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from cassava.shared.data import load_samples
from cassava.shared.labels import CROPNET_CLASSES

from helpers import REPO, LoopbackServer, Nginx, free_port, run_cli

pytestmark = pytest.mark.slow
STANDIN_NOTE = "stand-in model, synthetic data"


def _model_settings(tier: str, uri) -> dict:
    settings = json.loads((REPO / tier / "model-settings.json").read_text())
    settings["parameters"]["uri"] = str(uri)
    return settings


def _records(path: Path) -> list:
    return json.loads(path.read_text())


def _expected_files(n: int) -> list:
    return [s.name for s in load_samples("standin", n)]


def _infer_answers(server: LoopbackServer, status: str = "200") -> int:
    """How many REST infer requests the server answered with `status`, from its own Prometheus counters."""
    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if (line.startswith("rest_server_requests_total{") and 'path="/v2/models/{model_name}/infer"' in line
                and f'status_code="{status}"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _predict(*args, timeout=300) -> subprocess.CompletedProcess:
    """`python -m cassava.client ...`: the user's spelling of `cassava predict`."""
    return subprocess.run([sys.executable, "-m", "cassava.client", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _when(condition, then, timeout=120.0):
    """Run `then()` from a thread as soon as `condition()` holds; the event says whether it ran."""
    fired = threading.Event()

    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if condition():
                    then()
                    fired.set()
                    return
            except (OSError, httpx.HTTPError):
                pass
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return fired, thread


# ---------------------------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def cloud(standin_model, tmp_path_factory):
    server = LoopbackServer.mlserver(tmp_path_factory.mktemp("cloud"), _model_settings("cloud", standin_model))
    server.start(timeout=300)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def edge_model(standin_model, tmp_path_factory) -> Path:
    import cassava.edge.runtime  # noqa: F401 (the [dev] extra installs it: a broken import fails here)
    out = tmp_path_factory.mktemp("edge-int8")
    result = run_cli("convert", "--model", "standin", "--out", out, "--quantize", "int8", "--plain", "--samples", "60",
                     "--quiet")
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def edge(edge_model, tmp_path_factory):
    server = LoopbackServer.mlserver(tmp_path_factory.mktemp("edge"), _model_settings("edge", edge_model))
    server.start(timeout=300)
    yield server
    server.stop()


@pytest.fixture
def doomed_edge(edge_model, tmp_path):
    """An edge server of this test's own, for tests that kill it: no other test sees the loss."""
    server = LoopbackServer.mlserver(tmp_path / "doomed-edge", _model_settings("edge", edge_model)).start(timeout=300)
    yield server
    server.stop()


# ---------------------------------------------------------------------------------------------- --local


def test_local_cli_classifies_plots_and_records_every_image(cloud, tmp_path):
    out = tmp_path / "out"
    result = run_cli("predict", "--local", cloud.url, "--data", "standin", "-n", 24, "--batch-size", 8,
                     "--json", out / "p.json", "--csv", out / "p.csv", "--plot", out / "p.png")
    assert result.returncode == 0, result.stderr
    records = _records(out / "p.json")
    assert [r["file"] for r in records] == _expected_files(24)
    assert all(r["tier"] == "cloud" and r["prediction"] in CROPNET_CLASSES and "error" not in r for r in records)
    right = sum(r["prediction"] == r["label"] for r in records)
    assert right >= 18, f"the stand-in got only {right}/24 of its own synthetic photos right"
    assert f"{right}/24 right" in result.stdout and "tier: cloud" in result.stdout and STANDIN_NOTE in result.stdout
    with open(out / "p.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 24
    assert (out / "p.png").stat().st_size > 10_000


def test_every_wire_format_and_grpc_give_the_same_answers(cloud):
    from cassava.shared.client.backends import ServerBackend
    from cassava.shared.client.predict import classify_samples
    from cassava.shared.client.routing import Endpoint, SingleRoute
    from cassava.shared.protocol.transport import make_transport

    samples = load_samples("standin", 12)
    answers = {}
    for wire, grpc in (("compact", False), ("uint8", False), ("photo", False), ("float32", False), ("compact", True),
                       ("uint8", True)):
        transport = make_transport(cloud.url, "cassava", grpc, cloud.grpc_address if grpc else None)
        backend = ServerBackend(SingleRoute(Endpoint("cloud", transport)), wire=wire)
        assert backend.spec.input_size == 224 and backend.spec.class_names == CROPNET_CLASSES  # from the metadata
        try:
            records, thumbnails = classify_samples(backend, samples, batch_size=5, progress=False, concurrency=2)
        finally:
            backend.close()
        assert len(records) == 12 and all(r["prediction"] for r in records), records
        assert all(t is not None and t.shape == (224, 224, 3) for t in thumbnails)
        answers[(wire, "gRPC" if grpc else "REST")] = records
    reference = answers[("compact", "REST")]
    for key, records in answers.items():
        assert [r["prediction"] for r in records] == [r["prediction"] for r in reference], key
        for mine, theirs in zip(records, reference):  # the same pixels reach the model, whatever the wire
            assert max(abs(mine["probabilities"][c] - theirs["probabilities"][c]) for c in CROPNET_CLASSES) < 1e-4, key


def test_one_image_over_grpc_prints_its_top_three_classes(cloud):
    leaf = load_samples("standin", 1)[0].name
    result = run_cli("predict", "--local", cloud.url, "--grpc-url", cloud.grpc_address, "--data", leaf)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(leaf) and "ms, cloud)" in lines[0]
    # The three it prints are TensorFlow's own top three for that photo, in order, computed here in this process.
    from cassava.cloud.model import load_tf_classifier
    from cassava.shared.classifier import predict_pixels
    from cassava.shared.labels import display_name
    from cassava.shared.preprocess import preprocess

    probabilities = predict_pixels(load_tf_classifier("standin"), preprocess(leaf, 224)[None])[0]
    top3 = [CROPNET_CLASSES[i] for i in np.argsort(-probabilities)[:3]]
    assert [line.split()[:1] for line in lines[1:4]] == [["1."], ["2."], ["3."]]
    for line, name in zip(lines[1:4], top3):
        assert display_name(name) in line and f" {name} " in line, (line, top3)
        assert f"{probabilities[CROPNET_CLASSES.index(name)]:6.1%}" in line


def test_a_4xx_is_not_retried_and_each_record_carries_the_message(cloud, tmp_path):
    before = _infer_answers(cloud, "400")
    # Raw 0-255 floats to a model that takes [0, 1]: the server refuses each request with a 400 and says why.
    result = run_cli("predict", "--local", cloud.url, "--data", "standin", "-n", 8, "--batch-size", 4,
                     "--wire", "float32", "--input-scale", 255, "--retries", 3, "--json", tmp_path / "p.json")
    assert result.returncode == 1, result.stdout + result.stderr
    records = _records(tmp_path / "p.json")
    assert [r["file"] for r in records] == _expected_files(8)
    assert all(r["prediction"] is None and "HTTP 400" in r["error"] and "values outside [0, 1]" in r["error"]
               for r in records)
    assert "8 failed" in result.stdout
    assert _infer_answers(cloud, "400") - before == 2, "each of the 2 requests must be sent exactly once"


@pytest.mark.parametrize("args, message", [
    (["--local", "notaurl"], "bad URL 'notaurl'"),
    (["--edge", "http://127.0.0.1:99999"], "port"),
    (["--local", "@free", "--retries", "1"], "cannot connect"),
    (["--remote", "@free", "--retries", "0"], "/seldon/default/cassava/v2/models/cassava: cannot connect"),
    (["--local", "--edge"], "choose one of --local, --edge"),
    (["--auto", "--remote"], "--auto chooses between --edge and --cloud"),
])
def test_bad_urls_and_flags_are_one_line_and_exit_2(args, message):
    args = [f"http://127.0.0.1:{free_port()}" if a == "@free" else a for a in args]
    result = _predict(*args, "--data", "standin", "-n", 2, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cassava predict: error:") and message in lines[0], result.stderr


def test_a_wrong_model_name_is_the_servers_404_in_one_line(cloud):
    result = run_cli("predict", "--local", cloud.url, "--model-name", "manioc", "--data", "standin", "-n", 2)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"cassava predict: error: {cloud.url}/v2/models/manioc: HTTP 404: Model manioc not found"]


# ---------------------------------------------------------------------------------------------- --edge


def test_edge_cli_through_python_m_cassava_client(edge, tmp_path):
    result = _predict("--edge", edge.url, "--data", "standin", "-n", 16, "--json", tmp_path / "p.json",
                      "--plot", tmp_path / "p.png")
    assert result.returncode == 0, result.stderr
    records = _records(tmp_path / "p.json")
    assert [r["file"] for r in records] == _expected_files(16)
    assert all(r["tier"] == "edge" and r["prediction"] for r in records)
    assert "tier: edge" in result.stdout and (tmp_path / "p.png").is_file()


# ---------------------------------------------------------------------------------------------- --remote


def test_remote_through_the_ingress_survives_a_replica_killed_mid_run(standin_model, tmp_path):
    nginx_binary = shutil.which("nginx") or (Path("/usr/sbin/nginx") if Path("/usr/sbin/nginx").exists() else None)
    if not nginx_binary:
        pytest.skip("nginx is not installed (apt-get install nginx-light; `make test` does it as root)")
    replicas = [LoopbackServer.mlserver(tmp_path / f"replica-{i}", _model_settings("cloud", standin_model))
                for i in (0, 1)]
    ingress = None
    try:
        for replica in replicas:
            replica.start(timeout=300)
        ingress = Nginx(tmp_path / "nginx", replicas)
        ingress.start()
        lines_at_kill = []
        fired, watcher = _when(lambda: sum(" 200 " in line for line in ingress.infer_lines()) >= 4,
                               lambda: (lines_at_kill.append(len(ingress.infer_lines())), replicas[0].kill()))
        n = 160
        # A bare ingress address: the client adds /seldon/<namespace>/<deployment> (as `--remote` alone would).
        result = run_cli("predict", "--remote", ingress.url, "--data", "standin", "-n", n, "--batch-size", 4,
                         "--concurrency", 2, "--json", tmp_path / "p.json")
        watcher.join(5)
        assert result.returncode == 0, result.stdout + result.stderr
        assert fired.is_set() and not replicas[0].alive(), "the replica was not killed during the run"
        records = _records(tmp_path / "p.json")
        assert [r["file"] for r in records] == _expected_files(n)  # each image once, none lost
        assert all(r["prediction"] and r["tier"] == "cloud" for r in records)
        after_kill = ingress.infer_lines()[lines_at_kill[0]:]
        survivor = f"127.0.0.1:{replicas[1].http_port}"
        answered = [line for line in after_kill
                    if " 200 " in line and line.split("upstream=")[1].split()[0].endswith(survivor)]
        assert answered, "no request was answered by the surviving replica after the kill:\n" + "\n".join(after_kill)
        assert len(ingress.infer_lines()) >= n // 4

        # No replica left: the ingress answers 502, and the client retries it with growing pauses, then gives up.
        replicas[1].kill()
        from cassava.shared.protocol.transport import HttpTransport, Unavailable
        from cassava.shared.protocol.v2 import build_request

        before = len(ingress.infer_lines())
        transport = HttpTransport(f"{ingress.url}/seldon/default/cassava", retries=2, backoff_s=0.1, timeout=30)
        waits = []
        transport._retrying.sleep = waits.append  # the pauses it takes, seen without taking them
        with pytest.raises(Unavailable, match="HTTP 502"):
            transport.infer(build_request("uint8", pixels=np.zeros((1, 224, 224, 3), np.uint8), request_id="r"))
        assert waits == [0.1, 0.2]  # 1 try + 2 retries, the backoff doubling
        # Each try reached the ingress: nginx logs a request just after answering it, so its line may trail a little.
        deadline = time.time() + 5
        while len(ingress.infer_lines()) - before < 3 and time.time() < deadline:
            time.sleep(0.05)
        assert len(ingress.infer_lines()) - before == 3, ingress.infer_lines()[before:]
    finally:
        if ingress:
            ingress.stop()
        for replica in replicas:
            replica.stop()


# ---------------------------------------------------------------------------------------------- --auto


def test_auto_falls_back_to_the_cloud_when_the_edge_dies_mid_run(doomed_edge, cloud, tmp_path):
    edge = doomed_edge
    n, batch, concurrency = 160, 4, 2
    fired, watcher = _when(lambda: _infer_answers(edge) >= 4, edge.kill)
    result = run_cli("predict", "--auto", "--edge", edge.url, "--cloud", cloud.url, "--data", "standin", "-n", n,
                     "--batch-size", batch, "--concurrency", concurrency, "--json", tmp_path / "p.json")
    watcher.join(5)
    assert result.returncode == 0, result.stdout + result.stderr
    assert fired.is_set() and not edge.alive(), "the edge was not killed during the run"
    records = _records(tmp_path / "p.json")
    assert [r["file"] for r in records] == _expected_files(n)  # all answered, each exactly once, in order
    tiers = [r["tier"] for r in records]
    assert set(tiers) == {"edge", "cloud"} and all(r["prediction"] for r in records)
    first_cloud = tiers.index("cloud")
    assert all(t == "edge" for t in tiers[:first_cloud])
    # Only the requests in flight when the edge died may finish out of order; everything sent after is the cloud's.
    assert all(t == "cloud" for t in tiers[first_cloud + batch * concurrency:]), tiers
    assert "edge unavailable" in result.stderr and "using the cloud" in result.stderr
    assert f"edge {tiers.count('edge')}" in result.stdout and f"cloud {tiers.count('cloud')}" in result.stdout


def test_auto_goes_back_to_the_edge_when_it_returns(doomed_edge, cloud):
    from cassava.shared.client.backends import ServerBackend
    from cassava.shared.client.predict import classify_samples
    from cassava.shared.client.routing import Endpoint, FailoverRoute
    from cassava.shared.protocol.transport import HttpTransport

    edge = doomed_edge
    edge.kill()  # a Pi that lost power
    said = []
    route = FailoverRoute(Endpoint("edge", HttpTransport(edge.url, retries=0, timeout=10)),
                          Endpoint("cloud", HttpTransport(cloud.url, timeout=60)), probe_interval_s=0.5,
                          say=said.append)
    backend = ServerBackend(route)
    samples = load_samples("standin", 8)
    try:
        records, _ = classify_samples(backend, samples, batch_size=4, progress=False)
        assert [r["tier"] for r in records] == ["cloud"] * 8 and not route.preferred_up
        edge.start(timeout=300)  # the Pi is back, on the same address
        deadline, tiers = time.time() + 60, []
        while time.time() < deadline:
            records, _ = classify_samples(backend, samples, batch_size=4, progress=False)
            assert [r["file"] for r in records] == [s.name for s in samples] and all(r["prediction"] for r in records)
            tiers = [r["tier"] for r in records]
            if tiers == ["edge"] * 8:
                break
            time.sleep(0.2)
        assert tiers == ["edge"] * 8, f"still not back on the edge after 60 s: {tiers}"
        assert route.preferred_up and any("is back" in line for line in said), said
    finally:
        backend.close()


# ---------------------------------------------------------------------------------------------- cassava demo


def test_demo_runs_the_split_offline_and_stops_its_servers(standin_model, tmp_path):
    import cassava.edge.runtime  # noqa: F401 (the [dev] extra installs it: a broken import fails here)
    out = tmp_path / "demo"
    # Ports far from the defaults; any that are busy are swapped for free ones by the demo itself.
    result = run_cli("demo", "--out", out, "-n", 8, "--port-offset", 20000 + os.getpid() % 1000, "--skip-compare")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["note"] == STANDIN_NOTE and result.stdout.count(STANDIN_NOTE) >= 3
    for tier in ("cloud", "edge"):
        records = _records(Path(summary[tier]["json"]))
        assert len(records) == 8 and all(r["tier"] == tier and r["prediction"] for r in records)
        assert Path(summary[tier]["plot"]).stat().st_size > 10_000
        with pytest.raises(httpx.ConnectError):  # stopped, not left running
            httpx.get(f"{summary[tier]['url']}/v2/health/live", timeout=5)
    assert (out / "edge-int8" / "model.tflite").is_file() and "servers stopped" in result.stdout
    # the field step: an edge escalating to the cloud over the emulated slow link, hard photos settled later
    field = summary["field"]
    assert field["images"] == 8 and field["exit_code"] == 0
    assert field["answered_by_edge"] + field["cloud_in_request"] + field["provisional_then_cloud"] \
        + field["still_provisional"] + field["not_answered"] == 8, field
    assert field["provisional_then_cloud"] >= 1 and field["answered_by_edge"] >= 1, field
    assert len(field["settle_seconds"]) == field["provisional_then_cloud"]
    assert all(0 < t <= field["seconds"] for t in field["settle_seconds"]), field
    records = _records(Path(field["json"]))
    settled = [r for r in records if r.get("edge_answered_by") == "edge-provisional" and r["answered_by"] == "cloud"]
    assert len(settled) == field["provisional_then_cloud"] and all(r["settlement_id"] for r in settled)
    assert f"{field['provisional_then_cloud']} provisional then settled by the cloud" in result.stdout
    assert "chosen for the demo" in result.stdout and "256 kbit/s, 150 ms one way" in result.stdout
    with pytest.raises(httpx.ConnectError):  # the field edge is stopped too
        httpx.get(f"{field['url']}/v2/health/live", timeout=5)
