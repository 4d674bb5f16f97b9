"""compare's rejection table: how many of the evaluation photos each copy's leaf gate answers `unknown`
(docs/leaf-gate.md). The photos are labelled cassava leaves, so every `unknown` is a real leaf turned away."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from ..formatting import count_text
from ..policy import EscalationPolicy
from ..tiers import tool
from .metrics import wilson_interval


def _folder(path: str) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent


def rejection_table(entries, pixels: Dict[int, np.ndarray], probs_by_name: Dict[str, np.ndarray]) -> List[Dict]:
    """A row per model whose folder holds a gate (the cloud, when one of its copies has one, runs that same gate, as
    `cassava serve cloud --gate` does): unknown count with its interval, the gate's and the model's own class's."""
    from ..preprocess import to_model_input

    gated = [e for e in entries[1:] if e.path and tool("has_gate")(_folder(e.path))]
    if not gated:
        return []
    rows, gates = [], {}
    for entry in [entries[0], *entries[1:]]:
        source = entry if entry in gated else gated[0] if entry is entries[0] else None
        if source is None:
            continue
        folder = _folder(source.path)
        gate = gates.get(folder) or gates.setdefault(folder, tool("leaf_gate")(folder))
        x = to_model_input(pixels[entry.spec.input_size], entry.spec.input_scale)
        distances = gate.distances(x, entry.spec.input_scale)
        unknown = EscalationPolicy(gate_threshold=gate.threshold).unknown(
            probs_by_name[entry.name], entry.spec.class_names, distances)
        k, n = int(unknown.sum()), len(unknown)
        rows.append({"name": entry.name, "gate": str(folder), "unknown": k, "n": n,
                     "ci95": list(wilson_interval(k, n)), "threshold": gate.threshold})
    return rows


def rejection_lines(rows: List[Dict]) -> List[str]:
    if not rows:
        return []
    width = max(len(r["name"]) for r in rows)
    return ["leaf gate: real leaves answered `unknown` (turned away)"] + [
        f"  {r['name']:<{width}}  {count_text(r['unknown'], r['n'], r['ci95'])}" for r in rows]


def rejection_section(rows: List[Dict]) -> List[str]:
    """report.md's rejection table (empty without a gate)."""
    if not rows:
        return []
    lines = ["## Leaf gate: real leaves turned away", "",
             "Every evaluation photo is a labelled cassava leaf, so each `unknown` (the leaf gate, docs/leaf-gate.md, "
             "or the model's own unknown class) is one turned away; the cloud row runs its copy's gate, as "
             "`cassava serve cloud --gate` does.", "", "| model | unknown (95% CI) | gate threshold |", "|---|---|---|"]
    lines += [f"| {r['name']} | {count_text(r['unknown'], r['n'], r['ci95'], markdown=True)} | {r['threshold']:.4f} |"
              for r in rows]
    return lines + [""]
