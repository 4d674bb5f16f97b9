"""`cassava compare`: metrics equal hand-computed values; the report on the stand-in and on the real model."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cassava.shared.evaluate import metrics
from cassava.shared.evaluate.compare import score, summary_lines
from cassava.shared.evaluate.report import small_n_warning, write_report

from helpers import REAL_CLASSES, run_cli

# ------------------------------------------------------------------------------------ a tiny fixed set, by hand
# 10 images, 3 classes present (cbb, cbsd, cgm) and one class (cmd) that is neither a label nor a prediction.
CLASSES = ["cbb", "cbsd", "cgm", "cmd"]
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
CLOUD = [0, 0, 0, 1, 1, 1, 2, 2, 2, 0]  # 7/10 right
EDGE = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]  # 8/10 right; differs from CLOUD on the last image only


def _probs(predictions, top, rest):
    probs = np.full((len(predictions), 4), rest, dtype=np.float32)
    probs[:, 3] = 0.0
    probs[np.arange(len(predictions)), predictions] = top
    return probs


CLOUD_PROBS = _probs(CLOUD, 0.7, 0.15)  # rows sum to 1 over the 3 used classes
EDGE_PROBS = _probs(EDGE, 0.6, 0.2)


def test_wilson_interval_by_hand():
    # 7/10: p=0.7, z²=3.8415; centre (0.7 + 0.19208)/1.38415 = 0.64449, half 1.41601*sqrt(0.021 + 0.009604) = 0.24772
    assert metrics.wilson_interval(7, 10) == pytest.approx((0.3968, 0.8922), abs=1e-4)
    assert metrics.wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert metrics.wilson_interval(20, 27) == pytest.approx((0.5532, 0.8683), abs=1e-4)
    low, high = metrics.wilson_interval(0, 5)
    assert low == 0.0 and high == pytest.approx(0.4345, abs=1e-4)
    assert all(math.isnan(v) for v in metrics.wilson_interval(0, 0))


def test_metrics_by_hand():
    assert metrics.accuracy(Y_TRUE, CLOUD) == 0.7
    matrix = metrics.confusion_matrix(Y_TRUE, CLOUD, 4)
    assert matrix.tolist() == [[3, 1, 0, 0], [0, 2, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    rows = {r["class"]: r for r in metrics.per_class(matrix, CLASSES)}
    assert rows["cbb"]["precision"] == pytest.approx(3 / 4) and rows["cbb"]["recall"] == pytest.approx(3 / 4)
    assert rows["cbsd"]["precision"] == pytest.approx(2 / 3) and rows["cbsd"]["recall"] == pytest.approx(2 / 3)
    assert rows["cgm"]["precision"] == pytest.approx(2 / 3) and rows["cgm"]["recall"] == pytest.approx(2 / 3)
    assert rows["cmd"]["precision"] is None and rows["cmd"]["recall"] is None and rows["cmd"]["support"] == 0
    # macro-F1 over the 3 present classes: (0.75 + 2/3 + 2/3) / 3
    assert metrics.macro_f1(matrix) == pytest.approx(0.694444, abs=1e-6)
    assert metrics.agreement(CLOUD, EDGE) == (9, 0.9)
    delta = metrics.probability_delta(EDGE_PROBS, CLOUD_PROBS)
    # 9 images differ by 0.1 + 0.05 + 0.05 = 0.2, the last by 0.5 + 0.05 + 0.45 = 1.0; 40 entries in all (4 classes)
    assert delta["mean_abs"] == pytest.approx(2.8 / 40, abs=1e-6)
    assert delta["max_abs"] == pytest.approx(0.5, abs=1e-6)
    assert metrics.percentiles_ms([0.001, 0.002, 0.003]) == pytest.approx({"p50": 2.0, "p95": 2.9})


def _result(models):
    return {
        "title": "hand-made test set", "standin": False, "cloud_model": "cloud.sav", "reference": "cloud",
        "data": "ten images", "n": 10, "class_names": CLASSES,
        "small_n_warning": small_n_warning(10, models[0]["accuracy_ci95"]),
        "preprocessing": "once", "calibration": "none", "via": "in-process", "threads_all": 2, "notes": [],
        "throughput_note": "n/a", "date": "2026-01-01", "machine": "test", "predictions": [],
        "models": [{**m, "path": m["name"], "format": m["name"], "kind": "tf", "size_bytes": 1000 * (i + 1),
                    "images_per_s": 10.0, "latency_ms": {"threads_1": {"p50": 2.0, "p95": 3.0},
                                                         "threads_all": {"p50": 1.0, "p95": 1.5}}}
                   for i, m in enumerate(models)],
    }


def test_report_numbers_equal_hand_computed(tmp_path):
    models = score(Y_TRUE, {"cloud": CLOUD_PROBS, "edge int8": EDGE_PROBS}, "cloud", CLASSES)
    paths = write_report(_result(models), tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    cloud, edge = report["models"]
    assert (cloud["correct"], cloud["n"], cloud["accuracy"]) == (7, 10, 0.7)
    assert cloud["accuracy_ci95"] == pytest.approx([0.3968, 0.8922], abs=1e-4)
    assert cloud["macro_f1"] == pytest.approx(0.694444, abs=1e-6)
    assert cloud["confusion"] == [[3, 1, 0, 0], [0, 2, 1, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    precision = [r["precision"] for r in cloud["per_class"]]
    recall = [r["recall"] for r in cloud["per_class"]]
    assert precision[:3] == pytest.approx([0.75, 2 / 3, 2 / 3]) and precision[3] is None
    assert recall[:3] == pytest.approx([0.75, 2 / 3, 2 / 3]) and recall[3] is None
    assert cloud["agreement"] is None
    # edge: 8/10; precision cbb 3/3, cbsd 2/3, cgm 3/4; recall 3/4, 2/3, 3/3; F1 6/7, 2/3, 6/7
    assert (edge["correct"], edge["accuracy"]) == (8, 0.8)
    assert edge["accuracy_ci95"] == pytest.approx([0.4902, 0.9433], abs=1e-4)
    assert [r["precision"] for r in edge["per_class"]][:3] == pytest.approx([1.0, 2 / 3, 0.75])
    assert [r["recall"] for r in edge["per_class"]][:3] == pytest.approx([0.75, 2 / 3, 1.0])
    assert edge["macro_f1"] == pytest.approx((6 / 7 + 2 / 3 + 6 / 7) / 3)
    assert edge["confusion"] == [[3, 1, 0, 0], [0, 2, 1, 0], [0, 0, 3, 0], [0, 0, 0, 0]]
    assert {k: edge["agreement"][k] for k in ("same", "n", "fraction")} == {"same": 9, "n": 10, "fraction": 0.9}
    assert edge["agreement"]["ci95"] == pytest.approx([0.5958, 0.9821], abs=1e-4)  # Wilson 9/10
    assert edge["prob_delta"]["mean_abs"] == pytest.approx(0.07, abs=1e-6)

    md = (tmp_path / "report.md").read_text()
    assert "7/10 = 70.0% (39.7%–89.2%)" in md
    assert "8/10 = 80.0% (49.0%–94.3%)" in md
    # agreement and its interval first: a section of its own before the summary, and the table's first number
    assert md.index("## Agreement with cloud") < md.index("## Summary")
    assert "- **edge int8**: 9/10 = 90.0% (59.6%–98.2%); accuracy 8/10 vs 7/10 (+1 images)" in md
    summary_row = next(line for line in md.splitlines() if line.startswith("| **edge int8**"))
    assert summary_row.startswith("| **edge int8** | 9/10 = 90.0% (59.6%–98.2%) |")
    assert "N=10 — far too small to quote accuracy with confidence" in md
    assert "| cmd (Mosaic Disease) | 0 | — / — | — / — |" in md  # undefined precision/recall shown as —
    for name in ("confusion", "tradeoff"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5_000, paths
    assert not (tmp_path / "escalation.png").exists() and "## Joint inference" not in md  # no copies: no curve
    assert any("7/10 = 70.0%" in line for line in summary_lines(report))
    edge_line = next(line for line in summary_lines(report) if "edge int8" in line)
    assert edge_line.index("agreement 9/10 = 90.0% (95% CI 59.6%-98.2%)") < edge_line.index("accuracy")


def test_joint_inference_curve_by_hand(tmp_path):
    """EDGE differs from CLOUD on the last image only, which is also the edge's least confident: escalating it
    brings agreement to 10/10 but costs accuracy (the cloud is wrong there)."""
    from types import SimpleNamespace

    from cassava.shared.evaluate.escalation import escalation_curves

    top = [0.9, 0.8, 0.95, 0.55, 0.7, 0.85, 0.6, 0.75, 0.65, 0.5]
    edge = np.zeros((10, 4), np.float32)
    edge[:, :3] = ((1 - np.array(top)) / 2)[:, None]
    edge[np.arange(10), EDGE] = top
    entries = [SimpleNamespace(name="cloud", spec=None),
               SimpleNamespace(name="edge int8", spec=SimpleNamespace(escalate_below=0.58))]
    (copy,) = escalation_curves(entries, Y_TRUE, {"cloud": CLOUD_PROBS, "edge int8": edge})
    ladder = {p["budget"]: p for p in copy["ladder"]}
    assert len(ladder) >= 10 and copy["cloud_correct"] == 7
    assert {k: ladder[0.05][k] for k in ("escalated", "agreement", "correct")} == {
        "escalated": 0, "agreement": 0.9, "correct": 8}
    assert ladder[0.10]["threshold"] == pytest.approx(0.525) and ladder[0.15]["escalated"] == 1
    assert (ladder[0.10]["agreement"], ladder[0.10]["correct"]) == (1.0, 7)
    assert ladder[0.20]["threshold"] == pytest.approx(0.575) and ladder[0.20]["escalated"] == 2
    assert (ladder[1.0]["escalated"], ladder[1.0]["correct"]) == (10, 7)
    assert copy["stored"] == {"threshold": 0.58, "escalated": 2, "fraction_escalated": 0.2, "agreement": 1.0,
                              "correct": 7, "accuracy": 0.7}
    assert copy["hindsight"]["threshold"] == pytest.approx(0.525) and copy["hindsight"]["escalated"] == 1

    models = score(Y_TRUE, {"cloud": CLOUD_PROBS, "edge int8": edge}, "cloud", CLASSES)
    write_report({**_result(models), "escalation": [copy]}, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert md.index("## Agreement with cloud") < md.index("## Joint inference") < md.index("## Summary")
    assert "| ≤ 10% sent | < 0.525 | 1 (10.0%) | 100.0% | 7 (70.0%) |" in md
    assert "| **stored** | < 0.58 | 2 (20.0%) | 100.0% | 7 (70.0%) |" in md
    assert (tmp_path / "escalation.png").stat().st_size > 5_000 and "escalation.png" in md


# ------------------------------------------------------------------------------------ the whole command


@pytest.fixture(scope="module")
def standin_compare(standin_model, tmp_path_factory):
    """`make compare`'s stand-in run, once: no --edge-model, so the cloud model is converted into OUT/edge-models."""
    out = tmp_path_factory.mktemp("compare-standin")
    result = run_cli("compare", "--cloud-model", "standin", "--data", "standin", "-n", "24", "--out", out,
                     "--latency-images", "8", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.mark.slow
def test_standin_report_says_standin(standin_compare):
    out, result = standin_compare
    md = (out / "report.md").read_text()
    title = md.splitlines()[0]
    assert title.startswith("# ") and "stand-in model, synthetic data" in title
    assert "N=24" in md and "far too small to quote accuracy" in md
    assert "standin:train" in md  # which images calibrated int8, said on the page
    report = json.loads((out / "report.json").read_text())
    assert report["standin"] is True and report["n"] == 24
    names = [m["name"] for m in report["models"]]
    assert names == ["cloud TF", "edge int8", "edge dynamic", "edge float16"]
    for model in report["models"]:
        assert model["size_bytes"] > 0 and model["images_per_s"] > 0
        for threads in ("threads_1", "threads_all"):  # (percentiles_ms itself: by hand above)
            latency = model["latency_ms"][threads]
            assert latency is not None and "error" not in latency, (model["name"], threads, latency)
            assert latency["images"] == 8 and latency["p50"] > 0  # --latency-images 8, each timed, at both counts
    assert all(m["agreement"]["same"] >= 22 for m in report["models"][1:])  # 24 synthetic images
    assert "stand-in model, synthetic data" in result.stdout
    for png in ("confusion.png", "tradeoff.png", "escalation.png"):
        assert (out / png).stat().st_size > 10_000
    # joint inference: every copy's curve, and the threshold its conversion stored, measured on these 24 images
    assert [c["name"] for c in report["escalation"]] == names[1:]
    for copy in report["escalation"]:
        spec = json.loads((out / "edge-models" / copy["name"].split()[-1] / "cassava-model.json").read_text())
        assert copy["stored"]["threshold"] == spec["escalate_below"] and len(copy["ladder"]) >= 10
        assert copy["ladder"][-1]["agreement"] == 1.0 and copy["ladder"][-1]["escalated"] == 24
    assert "## Joint inference" in md and "| **stored** |" in md


@pytest.mark.slow
def test_given_edge_models_and_conversions_reused(standin_compare):
    out, _ = standin_compare
    int8 = out / "edge-models" / "int8" / "model.tflite"
    before = int8.stat().st_mtime_ns
    again = out / "again"
    result = run_cli("compare", "--cloud-model", "standin", "--data", "standin", "-n", "12", "--out", again,
                     "--edge-model", out / "edge-models" / "int8",
                     "--edge-model", int8.parent.parent / "float16" / "model.tflite",
                     "--latency-images", "0", "--no-plots", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((again / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["cloud TF", "edge int8", "edge float16"]
    assert not (again / "edge-models").exists() and not (again / "confusion.png").exists()
    # the same OUT again: the converted copies are reused, not rebuilt
    result = run_cli("compare", "--cloud-model", "standin", "--data", "standin", "-n", "6", "--out", out,
                     "--variants", "int8", "--latency-images", "0", "--no-plots", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert int8.stat().st_mtime_ns == before


def test_unlabelled_data_is_one_line(standin_model, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64), "green").save(tmp_path / "leaf.jpg")
    result = run_cli("compare", "--cloud-model", "standin", "--data", tmp_path / "leaf.jpg", "--out", tmp_path / "out")
    assert result.returncode == 2
    assert "no labelled images" in result.stderr and "Traceback" not in result.stderr


def test_python_dash_m_spelling():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "cassava.compare", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "--edge-model" in result.stdout


@pytest.fixture(scope="module")
def real_compare(real_model, real_photos, tmp_path_factory):
    """`make compare`'s real-model run, once: the 27 photos (N=27), converted copies in OUT/edge-models."""
    out = tmp_path_factory.mktemp("compare-real")
    result = run_cli("compare", "--cloud-model", real_model, "--input-scale", "255",
                     "--classes", ",".join(REAL_CLASSES),
                     "--data", real_photos, "--out", out, "--latency-images", "8", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.mark.slow
@pytest.mark.real
def test_real_model_comparison_on_27_photos(real_compare):
    out, result = real_compare
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 27 and report["standin"] is False
    cloud = {m["name"]: m for m in report["models"]}["cloud TF"]
    assert (cloud["correct"], cloud["n"]) == (20, 27)  # the tutorial's 20/27: N=27, a pipeline check, not accuracy
    assert cloud["accuracy_ci95"] == pytest.approx([0.5532, 0.8683], abs=1e-4)
    int8 = {m["name"]: m for m in report["models"]}["edge int8"]
    assert int8["agreement"]["same"] >= 26 and int8["agreement"]["n"] == 27
    assert int8["size_bytes"] < cloud["size_bytes"] / 4
    md = (out / "report.md").read_text()
    assert "N=27" in md and "N=27 — far too small to quote accuracy with confidence" in md
    assert "calibrated on 13 of the evaluation images themselves" in md  # said loudly, not hidden
    assert "stand-in" not in md.splitlines()[0]
    for png in ("confusion.png", "tradeoff.png"):
        assert (out / png).stat().st_size > 10_000
    assert "20/27" in result.stdout


# ------------------------------------------------------------------------------------ benchmarks/run_all.py


def test_bench_runner_tolerates_missing_and_failing_modules(tmp_path, monkeypatch):
    import sys

    from helpers import REPO

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import run_all

    (tmp_path / "bench_good.py").write_text(
        "def main():\n    print('own table')\n"
        "    return {'ratios': [{'name': 'fast', 'value': 2.0, 'target': 1.5, 'unit': 'x'},"
        " {'name': 'small', 'value': 3.0, 'target': 2.0, 'better': 'lower'}],"
        " 'target_speedup': 3.0, 'speedup_x': 3.5}\n")
    (tmp_path / "bench_bad.py").write_text("def main():\n    raise RuntimeError('no server')\n")
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    monkeypatch.setattr(run_all, "MODULES", (("bench_good", "g"), ("bench_bad", "b"), ("bench_gone", "m")))
    out = tmp_path / "latest.md"
    try:
        code = run_all.main(["--out", str(out)])
    finally:
        for name in ("bench_good", "bench_bad"):
            sys.modules.pop(name, None)
    assert code == 1  # one module failed; the others still ran
    md = out.read_text()
    assert "| bench_good | fast | 2x | ≥ 1.5x | PASS |" in md
    assert "| bench_good | small | 3 | ≤ 2 | MISS |" in md
    assert "| bench_good | speedup x | 3.5× | ≥ 3× | PASS |" in md
    assert "FAILED: RuntimeError: no server" in md
    assert "not run: benchmarks/bench_gone.py is absent" in md
    assert "own table" in md and "Machine:" in md and "cores" in md
