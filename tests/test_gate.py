"""The leaf gate end to end (issue 31, docs/leaf-gate.md), real processes: `cassava convert` of the third-party
model calibrated on ../shared's cassava-more builds the gate (cached); `cassava serve edge` runs it from the folder,
`cassava serve cloud --gate FOLDER` runs the very same one. A scene photo is `unknown` on both tiers (label, class
id past the model's classes, metadata naming it, leaf_score when asked, the Prometheus counter); a cassava photo is
not; under joint inference the scene is answered by the edge and never escalated, while a hard leaf goes to the
cloud; --no-gate serves without it."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from helpers import (
    REAL_CLASSES,
    REAL_MODEL,
    SHARED,
    LoopbackServer,
    converted,
    infer_json,
    photos_tensor,
    require_shared,
)

pytestmark = [pytest.mark.slow, pytest.mark.real]
MORE = SHARED / "data" / "cassava-more"
SCENE = SHARED / "data" / "not-cassava" / "scenes" / "skimage_coffee.png"


@pytest.fixture(scope="module")
def gated(tmp_path_factory) -> Path:
    require_shared(REAL_MODEL, MORE, SCENE)
    return converted(tmp_path_factory.getbasetemp() / "conversions", "real-int8-gate", "--model", REAL_MODEL,
                     "--input-scale", "255", "--classes", ",".join(REAL_CLASSES), "--quantize", "int8",
                     "--calibration", MORE)


@pytest.fixture(scope="module")
def photos():
    leaf = sorted((MORE / "healthy").iterdir())[0]  # one of the gate's reference photos: surely leaf-like
    return leaf.read_bytes(), SCENE.read_bytes()


@pytest.fixture(scope="module")
def cloud(tmp_path_factory, gated):
    server = LoopbackServer.serve(tmp_path_factory.mktemp("cloud"), "cloud", REAL_MODEL, "--input-scale", "255",
                                  "--classes", ",".join(REAL_CLASSES), "--gate", gated).start(timeout=300)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def edge(tmp_path_factory, gated):
    server = LoopbackServer.serve(tmp_path_factory.mktemp("edge"), "edge", gated).start(timeout=180)
    yield server
    server.stop()


def answer(server, files, outputs=None) -> dict:
    body = {"inputs": [photos_tensor(files)]}
    if outputs:
        body["outputs"] = [{"name": name} for name in outputs]
    response = infer_json(server, body)
    assert response.status_code == 200, response.text
    return {o["name"]: o["data"] for o in response.json()["outputs"]}


def unknown_count(server, tier: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(sample.value for family in text_string_to_metric_families(server.metrics())
               for sample in family.samples if sample.name == "cassava_unknown_total"
               and sample.labels == {"model_name": "cassava", "tier": tier})


def test_the_conversion_report_states_the_bound_and_rejection_by_kind(gated):
    gate = json.loads((gated / "conversion-report.json").read_text())["leaf_gate"]
    assert gate["bound"]["held_out"] == 100 and gate["references"] == 300
    assert gate["bound"]["expected_rate_at_most"] <= 0.02
    assert gate["int8_vs_float_cosine"]["mean"] > 0.95
    by_kind = gate["not_cassava"]["by_kind"]
    assert by_kind["scenes"]["rate"] >= 0.95 and by_kind["other-crop-leaves"]["rate"] >= 0.6
    manifest = json.loads((gated / "cassava-manifest.json").read_text())
    assert {"leaf-gate.tflite", "leaf-gate-references.npy", "leaf-gate.json"} <= set(json.dumps(manifest).split('"'))


@pytest.mark.parametrize("tier", ["edge", "cloud"])
def test_both_tiers_say_unknown_for_a_scene_and_not_for_a_leaf(request, tier, photos):
    server = request.getfixturevalue(tier)
    outputs = answer(server, list(photos))
    assert outputs["labels"][1] == "unknown" and outputs["class_ids"][1] == 5
    assert outputs["labels"][0] in REAL_CLASSES and outputs["class_ids"][0] < 5
    scores = answer(server, list(photos), ["leaf_score", "labels"])
    assert list(scores) == ["leaf_score", "labels"]
    assert scores["leaf_score"][0] > 0.5 > scores["leaf_score"][1]
    metadata = httpx.get(f"{server.url}/v2/models/cassava", timeout=10).json()
    assert metadata["parameters"]["class_names"].split(",") == list(REAL_CLASSES)  # the probabilities' columns
    assert metadata["parameters"]["unknown_class_id"] == "5" and metadata["parameters"]["unknown_label"] == "unknown"
    assert "leaf_score" in [o["name"] for o in metadata["outputs"]]
    before = unknown_count(server, tier)
    answer(server, list(photos))
    assert unknown_count(server, tier) == before + 1  # the scene, counted per model and tier


def test_a_rejected_photo_is_not_escalated(tmp_path, gated, cloud, photos):
    # every photo is hard (--escalate-below 1): the leaf goes to the cloud, the scene stays on the edge
    with LoopbackServer.serve(tmp_path, "edge", gated, "--escalate-to", cloud.url, "--escalate-below", "1.0",
                "--audit-rate", "0") as edge:
        outputs = answer(edge, list(photos))
    assert outputs["answered_by"] == ["cloud", "edge"]
    assert outputs["labels"][1] == "unknown"


def test_no_gate_serves_without_it(tmp_path, gated, photos):
    with LoopbackServer.serve(tmp_path, "edge", gated, "--no-gate") as edge:
        outputs = answer(edge, list(photos))
        metadata = httpx.get(f"{edge.url}/v2/models/cassava", timeout=10).json()
    assert "unknown" not in outputs["labels"] and list(outputs) == ["class_ids", "probabilities", "labels"]
    assert "unknown_class_id" not in metadata["parameters"]


def test_a_bad_gate_alpha_is_one_line(tmp_path):
    from helpers import run_cli

    result = run_cli("convert", "--model", "standin", "--gate-alpha", "2", "--out", tmp_path / "out", timeout=300)
    assert result.returncode == 2 and "--gate-alpha is a fraction" in result.stderr.strip().splitlines()[-1]


def test_predict_counts_unknown(tmp_path, edge, photos):
    from helpers import run_cli

    folder = tmp_path / "photos" / "healthy"
    folder.mkdir(parents=True)
    (folder / "leaf.jpg").write_bytes(photos[0])
    (folder / "scene.png").write_bytes(photos[1])
    result = run_cli("predict", "--edge", edge.url, "--data", tmp_path / "photos", "--plot", tmp_path / "grid.png",
                     timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = [line for line in (result.stdout + result.stderr).splitlines() if "images classified" in line]
    assert summary and "2 images classified" in summary[0] and "/2 right" in summary[0]
    assert ", 1 unknown (not like a cassava leaf)" in summary[0]
    assert (tmp_path / "grid.png").stat().st_size > 0  # the plot draws an `unknown` answer too


def test_the_page_says_it_is_not_a_cassava_leaf_and_how_to_retake(edge, tmp_path):
    from test_page import open_page, pick, text

    from browser import missing, phone_browser

    why = missing()
    if why:
        pytest.fail(f"the phone page needs a browser: {why}")  # as test_page on CI: never passes without it
    with phone_browser(downloads=tmp_path) as driver:
        open_page(driver, edge.url)
        assert pick(driver, SCENE) == "This does not look like a cassava leaf"
        assert "Retake the photo: one cassava leaf" in text(driver, "details")
        assert driver.find_elements("css selector", "#top3 li") == []  # no disease ranking under it
        leaf = sorted((MORE / "healthy").iterdir())[0]
        assert pick(driver, leaf) != "This does not look like a cassava leaf"


def test_watch_records_unknown_and_never_escalates_it(tmp_path, gated, cloud, photos):
    import subprocess

    from helpers import BIN

    inbox, out = tmp_path / "inbox", tmp_path / "results.jsonl"
    inbox.mkdir()
    (inbox / "leaf.jpg").write_bytes(photos[0])
    (inbox / "scene.png").write_bytes(photos[1])
    # every photo is hard (--escalate-below 1): only the leaf may go to the cloud
    result = subprocess.run([BIN / "cassava", "watch", "--model", gated, "--source", inbox, "--out", out, "--every",
                             "200ms", "--max-images", "2", "--duration", "240", "--escalate-to", cloud.url,
                             "--escalate-below", "1", "--audit-rate", "0"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    records = {r["file"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert records["scene.png"]["unknown"] is True and records["scene.png"]["escalate"] is None
    assert records["leaf.jpg"]["unknown"] is False and records["leaf.jpg"]["escalate"] == "hard"
