"""Write a cloud-vs-edge comparison as report.md, report.json and PNG figures.

The input is the plain dict `cassava.shared.evaluate.compare` builds (also what lands in report.json); nothing here
runs a model. Every page and figure names the models and the data, and stand-in results say "stand-in model,
synthetic data" at the top of the page and in every figure title.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Optional

from ..formatting import count_text, percent, size_text
from ..labels import display_name
from ..spec import STANDIN_NOTE
from .escalation import escalation_section, plot_escalation
from .rejection import rejection_section

SMALL_N = 100  # below this many labelled images the report warns that accuracy cannot be quoted


def small_n_warning(n: int, ci=None) -> Optional[str]:
    if n >= SMALL_N:
        return None
    text = f"N={n} — far too small to quote accuracy with confidence"
    if ci and not any(math.isnan(v) for v in ci):
        text += f" (the reference model's 95% interval alone spans {ci[0]:.0%}–{ci[1]:.0%})"
    return text + f"; use these numbers to compare the models with each other, not as accuracy (want N ≥ {SMALL_N})."


def headline(result: Dict) -> str:
    """What the models are and what they ran on, for every page and figure."""
    title = result["title"]
    if result.get("standin") and STANDIN_NOTE not in title:
        title = f"{title} ({STANDIN_NOTE})"
    return title


def data_line(result: Dict) -> str:
    text = f"data: {result['data']} (N={result['n']})"
    return text + (" — too few images to quote accuracy" if result.get("small_n_warning") else "")


def machine_info() -> Dict[str, str]:
    """CPU model, cores, Python and the ML library versions (only those already importable; nothing is loaded
    that the caller did not load, except version metadata)."""
    import os
    import platform
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()} {platform.machine()}"}
    for dist, key in (("tensorflow", "tensorflow"), ("ai-edge-litert", "litert"), ("mlserver", "mlserver")):
        try:
            info[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return info


def machine_line(info: Optional[Dict[str, str]] = None) -> str:
    info = info or machine_info()
    libs = ", ".join(f"{k} {info[k]}" for k in ("tensorflow", "litert", "mlserver") if k in info)
    return f"{info['cpu']}, {info['cores']} cores, Python {info['python']}" + (f", {libs}" if libs else "")


# ---------------------------------------------------------------------------------------------- formatting


def _num(value, fmt=".3f") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _ms(latency: Optional[Dict], key: str) -> str:
    if not latency or latency.get(key) is None:
        return "—"
    return f"{latency[key]:.1f}"


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- markdown


def _agreement(agree: Dict) -> str:
    return count_text(agree["same"], agree["n"], agree.get("ci95"), markdown=True)


def agreement_section(result: Dict) -> list:
    """First on the page: does each edge copy answer like the cloud model? Agreement needs no labels, so it is
    the edge's question even where the labels are noisy; accuracy differences follow."""
    reference = next(m for m in result["models"] if m["name"] == result["reference"])
    copies = [m for m in result["models"] if m.get("agreement")]
    if not copies:
        return []
    lines = [f"## Agreement with {reference['name']}", "",
             f"Top-1 agreement = images where the copy's class equals {reference['name']}'s, with its 95% Wilson "
             f"interval (N={result['n']}).", ""]
    for m in copies:
        change = m["correct"] - reference["correct"]
        lines.append(f"- **{m['name']}**: {_agreement(m['agreement'])}; accuracy {m['correct']}/{m['n']} vs "
                     f"{reference['correct']}/{reference['n']} ({change:+d} images)")
    return lines + [""]


def render_markdown(result: Dict, figures: Dict[str, str]) -> str:
    n = result["n"]
    models = result["models"]
    reference = result["reference"]
    lines = [f"# Cloud vs edge accuracy comparison — {headline(result)}", ""]
    if result.get("standin"):
        lines += [f"> **{STANDIN_NOTE}.** These numbers describe the offline stand-in on synthetic drawings of leaves; "
                  "they are not cassava accuracy and must not be quoted as such.", ""]
    lines += [
        f"- **Models:** reference (cloud) `{result['cloud_model']}`; " +
        ", ".join(f"{m['name']} `{m['path']}`" for m in models if m["name"] != reference),
        f"- **Data:** {result['data']} — **N={n}** labelled images, classes {', '.join(result['class_names'])}",
        f"- **Preprocessing:** {result['preprocessing']}",
        f"- **int8 calibration:** {result.get('calibration') or 'n/a (no converted int8 model)'}",
        f"- **Run:** {result['date']} on {result['machine']}",
        f"- **Source of predictions:** {result['via']}",
        "",
    ]
    warning = result.get("small_n_warning")
    if warning:
        lines += [f"> ⚠️ **{warning}**", ""]
    for note in result.get("notes", []):
        lines += [f"> {note}", ""]

    lines += agreement_section(result)
    lines += escalation_section(result)
    lines += rejection_section(result.get("rejection") or [])
    lines += ["## Summary", "",
              f"Accuracy with its 95% Wilson interval; agreement = images where the model's top-1 class equals the "
              f"reference's (`{reference}`); mean |Δp| = mean absolute difference of the probabilities from the "
              f"reference's, over all images and classes. Latency is per image (batch of 1) in ms.", ""]
    header = ["model", f"agreement with {reference} (95% CI)", "mean |Δp|", "format", "size", "accuracy (95% CI)",
              "macro-F1", "p50 / p95 ms, 1 thread", f"p50 / p95 ms, {result['threads_all']} threads", "images/s"]
    rows = []
    for m in models:
        low, high = m["accuracy_ci95"]
        agree = m.get("agreement") or {}
        delta = m.get("prob_delta") or {}
        lat = m.get("latency_ms") or {}
        rows.append([
            f"**{m['name']}**", _agreement(agree) if agree else "— (reference)", _num(delta.get("mean_abs"), ".4f"),
            m["format"], size_text(m.get("size_bytes")),
            count_text(m["correct"], m["n"], (low, high), markdown=True),
            _num(m["macro_f1"]),
            f"{_ms(lat.get('threads_1'), 'p50')} / {_ms(lat.get('threads_1'), 'p95')}",
            f"{_ms(lat.get('threads_all'), 'p50')} / {_ms(lat.get('threads_all'), 'p95')}",
            _num(m.get("images_per_s"), ".1f"),
        ])
    lines += [_table(header, rows), ""]
    timing_notes = sorted({m["latency_ms"]["note"] for m in models if (m.get("latency_ms") or {}).get("note")})
    lines += [f"- {note}" for note in timing_notes]
    lines += [f"- images/s: {result['throughput_note']}", ""]

    lines += ["## Per-class precision and recall", "",
              "Precision = of the images the model called this class, the share that were; recall = of the images of "
              "this class, the share the model found. `—` where undefined (0/0). "
              "Support = labelled images of the class.",
              ""]
    names = [m["name"] for m in models]
    header = ["class", "support"] + [f"{name} P / R" for name in names]
    rows = []
    for i, cls in enumerate(result["class_names"]):
        row = [f"{cls} ({display_name(cls)})", models[0]["per_class"][i]["support"]]
        for m in models:
            stats = m["per_class"][i]
            row.append(f"{percent(stats['precision'], 0)} / {percent(stats['recall'], 0)}")
        rows.append(row)
    lines += [_table(header, rows), ""]
    lines += ["Macro-F1 (mean F1 over classes present in the labels or predictions): " +
              ", ".join(f"{m['name']} {_num(m['macro_f1'])}" for m in models), ""]

    lines += ["## Confusion matrices", "", "Rows: true class; columns: predicted class; counts of images.", ""]
    for m in models:
        lines += [f"**{m['name']}** ({m['format']}, {m['correct']}/{m['n']} right)", ""]
        header = ["true \\ predicted"] + list(result["class_names"])
        rows = [[cls] + list(row) for cls, row in zip(result["class_names"], m["confusion"])]
        lines += [_table(header, rows), ""]

    disagreements = [p for p in result.get("predictions", []) if len({p["predictions"][k] for k in names}) > 1]
    lines += ["## Where the models disagree", ""]
    if disagreements:
        header = ["image", "label"] + names
        rows = [[Path(p["file"]).name, p["label"]] + [p["predictions"][k] for k in names] for p in disagreements[:50]]
        lines += [_table(header, rows), ""]
        if len(disagreements) > 50:
            lines += [f"(first 50 of {len(disagreements)}; all predictions are in report.json)", ""]
    else:
        lines += ["Every model gave the same top-1 class on every image.", ""]

    if figures:
        lines += ["## Figures", ""]
        for caption, name in figures.items():
            lines += [f"![{caption}]({name})", ""]
    lines += ["---", f"{headline(result)} · {data_line(result)} · written by `cassava compare`", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusions(result: Dict, path) -> str:
    """All the models' confusion matrices side by side, row-normalised colour, counts written in."""
    import numpy as np

    plt = _pyplot()
    models = result["models"]
    classes = result["class_names"]
    size = 0.55 * len(classes) + 1.6
    fig, axes = plt.subplots(1, len(models), figsize=(size * len(models), size + 1.4), squeeze=False)
    for ax, m in zip(axes[0], models):
        matrix = np.asarray(m["confusion"], dtype=float)
        rows = matrix.sum(axis=1, keepdims=True)
        shares = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, int(count), ha="center", va="center", fontsize=8,
                        color="white" if shares[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45, fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{m['name']}\n{m['correct']}/{m['n']} = {m['accuracy']:.1%}", fontsize=9)
    fig.suptitle(f"{headline(result)}\n{data_line(result)} — confusion matrices", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


def plot_tradeoff(result: Dict, path) -> str:
    """Accuracy (95% CI bars) against per-image latency, marker area ∝ model size; and the sizes as bars."""
    plt = _pyplot()
    models = result["models"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    biggest = max((m.get("size_bytes") or 1) for m in models)
    unit, scale = ("MB", 1 << 20) if biggest >= 1 << 20 else ("KB", 1 << 10)
    slowest = 0.0
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    one_thread = all(((m.get("latency_ms") or {}).get("threads_1") or {}).get("p50") is not None for m in models)
    key = "threads_1" if one_thread else "threads_all"
    for i, m in enumerate(models):
        lat = ((m.get("latency_ms") or {}).get(key) or {}).get("p50")
        colour = colours[i % len(colours)]
        low, high = m["accuracy_ci95"]
        if lat is not None:
            slowest = max(slowest, lat)
            area = 40 + 1200 * (m.get("size_bytes") or 0) / biggest
            left.scatter([lat], [m["accuracy"]], s=area, color=colour, alpha=0.45, edgecolors="black", zorder=2,
                         label=f"{m['name']} ({size_text(m.get('size_bytes'))})")
            left.errorbar([lat], [m["accuracy"]], yerr=[[m["accuracy"] - low], [high - m["accuracy"]]], fmt="o",
                          color=colour, ecolor=colour, capsize=5, markersize=3, zorder=3)
        right.bar(i, (m.get("size_bytes") or 0) / scale, color=colour)
    left.set_xlabel("latency per image, p50, " + ("1 thread" if one_thread else "all threads") + " (ms)")
    left.set_ylabel("accuracy (bars: 95% Wilson interval)")
    left.set_ylim(-0.02, 1.02)
    left.set_xlim(0, slowest * 1.3 if slowest else 1)
    left.grid(alpha=0.3)
    legend = left.legend(fontsize=8, loc="lower right", title="marker area ∝ size on disk", title_fontsize=8)
    for handle in getattr(legend, "legend_handles", None) or getattr(legend, "legendHandles", []):
        handle.set_sizes([50])
    right.set_xticks(range(len(models)), [m["name"] for m in models], rotation=30, fontsize=8, ha="right")
    right.set_ylabel(f"size on disk ({unit})")
    right.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{headline(result)}\n{data_line(result)} — accuracy vs latency vs size", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------------------------------------- all of it


def _json_safe(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _json_safe(value.item())
    return value


def write_report(result: Dict, out_dir, plots: bool = True) -> Dict[str, str]:
    """report.md + report.json (+ confusion.png, tradeoff.png, escalation.png) in out_dir; -> their paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, figures = {}, {}
    if plots:
        paths["confusion"] = plot_confusions(result, out / "confusion.png")
        paths["tradeoff"] = plot_tradeoff(result, out / "tradeoff.png")
        figures = {"confusion matrices": "confusion.png", "accuracy vs latency vs size": "tradeoff.png"}
        if result.get("escalation"):
            paths["escalation"] = plot_escalation(result, out / "escalation.png", headline(result))
            figures["agreement and accuracy vs fraction escalated"] = "escalation.png"
    (out / "report.json").write_text(json.dumps(_json_safe(result), indent=2) + "\n")
    paths["json"] = str(out / "report.json")
    (out / "report.md").write_text(render_markdown(result, figures))
    paths["md"] = str(out / "report.md")
    return paths
