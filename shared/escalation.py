"""What makes an image "hard" for the edge model, in one place: a confidence score from the edge model's own
probabilities, and the threshold below which an image goes to the cloud.

An image is hard when `confidence(p) < threshold`. The threshold is chosen from a target: given, for held-out
images, the edge's confidence and whether the edge agreed with the full model, `threshold_for` returns the smallest
threshold whose escalations (answered by the full model, so agreeing by definition) bring agreement up to the
target. Pure numpy: used by the edge server, and by whatever computes the curve (convert, compare).

With a margin (`choose(..., margin=0.95)`, what `cassava convert` stores): the threshold is judged by the
one-sided Clopper–Pearson lower bound on agreement among the images the edge keeps (shared/bounds.py), not by the
point estimate alone; see `with_margin`.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from .bounds import lower_bound

# Scores compared on the real model (docs/joint-inference.md); every one is in [0, 1], higher = more confident.
SCORES = ("top", "margin", "entropy")
# The one the server uses. On the real model and photos, top probability escalated the fewest images for the same
# agreement (docs/joint-inference.md: the measured curve); it is also the simplest to explain.
SCORE = "top"
# The fraction of confident images also sent to the cloud, to measure the edge's agreement where it was sure (the
# audited agreement). 2%: with a threshold escalating up to ~10% of images that adds ~2% of traffic, and at 100 photos
# a day gives ~60 audits a month: enough to see that agreement fall from ~99% to 90% (6 disagreements where ~0.6 are
# expected), a drift worth a look.
DEFAULT_AUDIT_RATE = 0.02


def confidence(probabilities: np.ndarray, score: str = SCORE) -> np.ndarray:
    """float [N, C] probabilities -> float [N] confidence in [0, 1]:
    top      the largest probability
    margin   the largest minus the second largest
    entropy  1 - H(p) / log C (1: one class certain; 0: uniform)"""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be [N, C] with C >= 2, got shape {list(p.shape)}")
    if score == "top":
        return p.max(axis=1)
    if score == "margin":
        ordered = np.sort(p, axis=1)
        return ordered[:, -1] - ordered[:, -2]
    if score == "entropy":
        safe = np.clip(p, 1e-12, 1.0)
        return 1.0 - (-(p * np.log(safe)).sum(axis=1)) / np.log(p.shape[1])
    raise ValueError(f"unknown confidence score {score!r} (choose from {', '.join(SCORES)})")


def is_hard(probabilities: np.ndarray, threshold: float, score: str = SCORE) -> np.ndarray:
    """-> bool [N]: the images the edge should not answer alone."""
    return confidence(probabilities, score) < threshold


def candidate_thresholds(scores: Sequence[float]) -> np.ndarray:
    """Every threshold that sends a different set: 0 (none), midpoints between consecutive distinct scores, and just
    above the largest (all). Midpoints, so that a score equal to one seen here falls on the same side again."""
    distinct = np.unique(np.asarray(scores, dtype=np.float64))
    if distinct.size == 0:
        return np.array([0.0])
    middles = (distinct[:-1] + distinct[1:]) / 2
    return np.concatenate([[0.0], middles, [np.nextafter(distinct[-1], np.inf)]])


def curve(scores: Sequence[float], agreed: Sequence[bool]) -> List[dict]:
    """Agreement with the full model vs the fraction escalated, one point per candidate threshold (ascending).
    Escalated images count as agreeing: the full model answers them."""
    scores, agreed = _pairs(scores, agreed)
    return [at_threshold(scores, agreed, threshold) for threshold in candidate_thresholds(scores)]


def threshold_for(scores: Sequence[float], agreed: Sequence[bool], target: float) -> float:
    """The smallest threshold whose agreement reaches `target` (it sends the fewest images that do)."""
    return point_for(curve(scores, agreed), target)["threshold"]


def point_for(points: Sequence[dict], target: float) -> dict:
    """The first point of a `curve` (the fewest escalations) whose agreement reaches `target`."""
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target agreement must be between 0 and 1, not {target}")
    for point in points:
        if point["agreement"] >= target - 1e-12:
            return point
    raise AssertionError("escalating every image always reaches agreement 1")


def at_threshold(scores: Sequence[float], agreed: Sequence[bool], threshold: float) -> dict:
    """One point of the curve at a given threshold (e.g. one chosen elsewhere, applied to new images)."""
    scores, agreed = _pairs(scores, agreed)
    hard = scores < threshold
    n = max(1, len(scores))
    return {"threshold": float(threshold), "escalated": int(hard.sum()), "fraction_escalated": float(hard.sum()) / n,
            "agreement": float((hard | agreed).sum()) / n}


def _pairs(scores, agreed):
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    agreed = np.asarray(agreed, dtype=bool).reshape(-1)
    if scores.shape != agreed.shape:
        raise ValueError(f"{scores.size} scores but {agreed.size} agreement flags")
    return scores, agreed


def kept_bound(scores: Sequence[float], agreed: Sequence[bool], threshold: float, confidence: float) -> dict:
    """Agreement among the images the edge keeps at `threshold` (confidence >= threshold), with its one-sided lower
    bound: "with `confidence`, agreement on the photos the edge keeps is >= lower (N = kept)"."""
    scores, agreed = _pairs(scores, agreed)
    kept = scores >= threshold
    n, k = int(kept.sum()), int((kept & agreed).sum())
    return {"confidence": float(confidence), "kept": n, "kept_agreed": k,
            "lower": lower_bound(k, n, confidence) if n else None}


def with_margin(scores: Sequence[float], agreed: Sequence[bool], target: float, confidence: float) -> dict:
    """The threshold chosen with a margin, -> {"threshold", "rule", "certified", **kept_bound}:

    1. the smallest threshold whose lower bound on kept agreement reaches `target` ("certified"); else, when the
       held-out images are too few for any threshold to prove it (no disagreement among n kept images proves at
       most (1 - confidence) ** (1/n): 99.5 % at 95 % needs n >= 598),
    2. of the thresholds at or above the point estimate's (`threshold_for`), the one with the highest lower bound
       (ties: the fewest sent). It never sends fewer than the point estimate; it sends more when that removes a
       disagreement the bound counts against the edge (e.g. the last kept disagreement of 300)."""
    scores, agreed = _pairs(scores, agreed)
    candidates = [t for t in candidate_thresholds(scores) if (scores >= t).any()]  # keeping none promises nothing
    for threshold in candidates:
        kept = scores >= threshold
        if (kept & agreed).sum() < target * kept.sum() - 1e-9:
            continue  # the bound is below the point estimate, so below the target too
        bound = kept_bound(scores, agreed, threshold, confidence)
        if bound["lower"] >= target - 1e-12:
            return {"threshold": float(threshold), "rule": "bound", "certified": True, **bound}
    point = threshold_for(scores, agreed, target)
    best = None
    for threshold in [t for t in candidates if t >= point] or [point]:
        bound = kept_bound(scores, agreed, threshold, confidence)
        if best is None or (bound["lower"] or 0.0) > (best[1]["lower"] or 0.0) + 1e-12:
            best = (threshold, bound)
    return {"threshold": float(best[0]), "rule": "highest bound at or above the point estimate", "certified": False,
            **best[1]}


def choose(edge_probabilities: np.ndarray, full_probabilities: np.ndarray, target: float,
           score: str = SCORE, margin: Optional[float] = None) -> dict:
    """The threshold meeting `target` on images both models answered, with its curve: what `cassava convert` stores
    (on its held-out images) and `cassava compare` reports. Non-finite edge outputs: disagreeing, confidence 0.
    `margin` (a confidence, e.g. 0.95): choose with a margin (`with_margin`) and report the bound as `margin`;
    None: the point estimate alone (`threshold_for`)."""
    edge = np.asarray(edge_probabilities, dtype=np.float64)
    full = np.asarray(full_probabilities, dtype=np.float64)
    finite = np.all(np.isfinite(edge), axis=1)
    agreed = finite & (edge.argmax(axis=1) == full.argmax(axis=1))
    scores = np.where(finite, confidence(np.nan_to_num(edge), score), 0.0)
    points = curve(scores, agreed)
    chosen = point_for(points, target)
    bound = None
    if margin is not None and len(scores):
        bound = with_margin(scores, agreed, target, margin)
        chosen = at_threshold(scores, agreed, bound["threshold"])
        bound["point_threshold"] = point_for(points, target)["threshold"]
    return {"margin": bound, "score": score, "target": float(target), "images": int(len(scores)),
            "edge_alone_agreement": float(agreed.mean()) if len(scores) else 1.0,
            "threshold": chosen["threshold"], "escalated": chosen["escalated"],
            "fraction_escalated": chosen["fraction_escalated"], "agreement": chosen["agreement"], "curve": points}
