"""Joint inference in `cassava compare`: if each edge copy sent its hard images to the reference (the cloud model),
how would agreement with the cloud and accuracy grow with the fraction escalated? Computed from the predictions the
comparison already made (no model runs here), for the threshold each copy's cassava-model.json carries
(`escalate_below`, chosen by `cassava convert` on its own held-out images) and for a fixed ladder of fractions.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from ..escalation import SCORE, candidate_thresholds, confidence, curve, point_for

# The curve is shown at the thresholds that escalate at most these fractions of the compared images (at least 10
# points, as the issue asks), plus the stored threshold and the one that reaches TARGET on this very data.
FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.10, 0.15, 0.20, 0.30, 0.50, 0.75, 1.0)
TARGET = 0.995


def settled_point(scores, edge_pred, cloud_pred, y_true, threshold: float) -> Dict:
    """What the joint system answers at `threshold`: hard images take the cloud's class, the rest the edge's."""
    hard = scores < threshold
    settled = np.where(hard, cloud_pred, edge_pred)
    n = max(1, len(scores))
    return {"threshold": float(threshold), "escalated": int(hard.sum()), "fraction_escalated": float(hard.sum()) / n,
            "agreement": float(np.sum(settled == cloud_pred)) / n, "correct": int(np.sum(settled == y_true)),
            "accuracy": float(np.sum(settled == y_true)) / n}


def ladder(scores, edge_pred, cloud_pred, y_true) -> List[Dict]:
    """One point per fraction in FRACTIONS: the largest threshold escalating at most that fraction."""
    candidates = candidate_thresholds(scores)
    sent = np.array([np.sum(scores < t) for t in candidates])
    points = []
    for fraction in FRACTIONS:
        threshold = candidates[np.flatnonzero(sent <= fraction * len(scores) + 1e-9)[-1]]
        points.append({"budget": fraction, **settled_point(scores, edge_pred, cloud_pred, y_true, threshold)})
    return points


def escalation_curves(entries, y_true, probs_by_name: Dict[str, np.ndarray]) -> List[Dict]:
    """The comparison step: per edge copy, the curve, its stored threshold's point and the hindsight best."""
    reference = entries[0]
    cloud_pred = np.asarray(probs_by_name[reference.name]).argmax(axis=1)
    y_true = np.asarray(y_true)
    copies = []
    for entry in entries[1:]:
        probs = np.asarray(probs_by_name[entry.name])
        finite = np.all(np.isfinite(probs), axis=1)
        scores = np.where(finite, confidence(np.nan_to_num(probs)), 0.0)
        edge_pred = probs.argmax(axis=1)
        stored: Optional[float] = getattr(entry.spec, "escalate_below", None)
        best = point_for(curve(scores, finite & (edge_pred == cloud_pred)), TARGET)["threshold"]
        copies.append({
            "name": entry.name, "score": SCORE, "ladder": ladder(scores, edge_pred, cloud_pred, y_true),
            "stored": (settled_point(scores, edge_pred, cloud_pred, y_true, stored) if stored is not None else None),
            "hindsight": {"target": TARGET, **settled_point(scores, edge_pred, cloud_pred, y_true, best)},
            "cloud_correct": int(np.sum(cloud_pred == y_true)),
        })
    return copies


# ---------------------------------------------------------------------------------------------- report.md, plot


def _row(label: str, p: Dict) -> list:
    return [label, f"< {p['threshold']:.4g}", f"{p['escalated']} ({p['fraction_escalated']:.1%})",
            f"{p['agreement']:.1%}", f"{p['correct']} ({p['accuracy']:.1%})"]


def escalation_section(result: Dict) -> List[str]:
    copies = result.get("escalation") or []
    if not copies:
        return []
    n = result["n"]
    lines = ["## Joint inference: escalating the hard images to the cloud model", "",
             f"If the edge copy sent every image whose top probability is below a threshold to `{result['reference']}` "
             f"and kept its own answer for the rest (N={n}): agreement with `{result['reference']}` and accuracy, "
             "per threshold. **stored**: the copy's `escalate_below` (chosen by `cassava convert` on its own held-out "
             f"images); **hindsight**: the smallest threshold reaching {TARGET:.1%} agreement on these very images "
             "(optimistic: chosen on the data it is judged on).", ""]
    for copy in copies:
        rows = [_row(f"≤ {p['budget']:.0%} sent", p) for p in copy["ladder"]]
        if copy["stored"]:
            rows.append(_row("**stored**", copy["stored"]))
        rows.append(_row("hindsight", copy["hindsight"]))
        lines += [f"**{copy['name']}** (the cloud model alone: {copy['cloud_correct']}/{n} right)", "",
                  _table(["threshold for", "top probability", "escalated", f"agreement with {result['reference']}",
                          "right"], rows), ""]
    return lines


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def plot_escalation(result: Dict, path, title: str) -> str:
    """Agreement with the reference and accuracy against the fraction escalated; the stored threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, copy in enumerate(result["escalation"]):
        colour = colours[i % len(colours)]
        for ax, key in zip(axes, ("agreement", "accuracy")):
            xs = [p["fraction_escalated"] for p in copy["ladder"]]
            ax.plot(xs, [p[key] for p in copy["ladder"]], "o-", color=colour, label=copy["name"], markersize=4)
            if copy["stored"]:
                ax.plot([copy["stored"]["fraction_escalated"]], [copy["stored"][key]], "*", color=colour,
                        markersize=14, markeredgecolor="black", label=f"{copy['name']}: stored threshold")
    for ax, what in zip(axes, (f"agreement with {result['reference']}", "accuracy")):
        ax.set_xlabel("fraction of images escalated to the cloud model")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.set_ylim(top=min(ax.get_ylim()[1], 1.005))  # both are fractions: no axis above 100 %
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{title}\njoint inference: what escalating the hard images buys", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)
