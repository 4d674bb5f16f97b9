"""What `cassava predict` leaves behind: the summary line, the top-3 text, and the plot / JSON / CSV files."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Optional

from ..labels import display_name, top_k
from ..policy import UNKNOWN

# answered_by: an escalating edge's word per image (edge, cloud, edge-provisional); empty from other servers
RECORD_KEYS = ("file", "label", "prediction", "probability", "tier", "answered_by", "latency_ms")
# After `--settle-wait`: the edge's own answer beside the final one, and the settlement it came from
SETTLEMENT_KEYS = ("edge_prediction", "edge_probability", "edge_answered_by", "settlement_id")


def tier_summary(records, default: str) -> str:
    """`edge`, `cloud`, or for --auto how many each tier answered: `edge 40, cloud 24`."""
    counts = Counter(r["tier"] for r in records if r.get("prediction"))
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{tier} {n}" for tier, n in counts.most_common()) if counts else default


def summarize(records, title: str, tier: str) -> str:
    done = [r for r in records if r.get("prediction")]
    failed = len(records) - len(done)
    labelled = [r for r in done if r["label"] is not None]
    text = f"{len(done)} image{'' if len(done) == 1 else 's'} classified"
    if labelled:
        right = sum(r["label"] == r["prediction"] for r in labelled)
        text += f", {right}/{len(labelled)} right ({right / len(labelled):.1%})"
    unknown = sum(r["prediction"] == UNKNOWN for r in done)
    if unknown:
        text += f", {unknown} unknown (not like a cassava leaf)"
    if failed:
        text += f", {failed} failed (reported above)"
    return f"{text}; model: {title}; tier: {tier}{escalation_summary(done)}"


def escalation_summary(done) -> str:
    """'; 5 settled by the cloud, 1 provisional' when the edge escalated; '' when no record says who answered."""
    counts = Counter(r.get("answered_by") for r in done)
    if not any(counts[k] for k in counts if k):
        return ""
    text = f"; {counts['cloud']} settled by the cloud"
    later = sum(r.get("edge_answered_by") == "edge-provisional" and r.get("answered_by") == "cloud" for r in done)
    if later:
        text += f" ({later} of them after the run)"
    if counts["edge-provisional"]:
        text += f", {counts['edge-provisional']} answered provisionally by the edge (cloud unreachable)"
        if any("edge_prediction" in r for r in done):
            text = text.replace("(cloud unreachable)", "and still provisional")
    return text


def top_k_text(record: dict, k: int = 3) -> str:
    """The classic Raspberry Pi classifier output: top guesses with display names, and the time it took."""
    ranked = top_k(record["probabilities"].values(), record["probabilities"].keys(), k)
    who = record["tier"] + (f", answered by {record['answered_by']}" if record.get("answered_by") else "")
    lines = [f"{record['file']}  ({record['latency_ms']:.1f} ms, {who})"]
    lines += [f"  {i}. {display_name(name):<22} {name:<8} {p:6.1%}" for i, (name, p) in enumerate(ranked, 1)]
    return "\n".join(lines)


def write_outputs(records, thumbnails, title: str, tier: str, plot: Optional[Path], json_path: Optional[Path],
                  csv_path: Optional[Path]):
    keys = RECORD_KEYS + (SETTLEMENT_KEYS if any("edge_prediction" in r for r in records) else ())
    public = [{k: r.get(k) for k in keys} | ({"error": r["error"]} if r.get("error") else {}) for r in records]
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(public, indent=2) + "\n")
    if csv_path:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(keys) + ["error"])
            writer.writeheader()
            writer.writerows(public)
    if plot:
        from .plotting import plot_predictions

        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_predictions(thumbnails, records, f"{title} — tier: {tier}", plot)
