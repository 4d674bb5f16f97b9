"""The gate's threshold from cassava photos only: an order statistic of held-out scores, with its bound.

Held-out cassava photos are scored against the reference photos (none shared). For a new cassava photo from the same
source, the chance that its score exceeds the r-th smallest of n held-out scores is 1 - U where U ~ Beta(r, n+1-r)
(split conformal; scores continuous). So:
  expected rate turned away   (n + 1 - r) / (n + 1)     (<= alpha with r = ceil((n + 1)(1 - alpha)))
  the rate is <= alpha with probability  P(U >= 1 - alpha) = 1 - BetaCDF(1 - alpha; r, n + 1 - r)
Adding the held-out photos to the references afterwards can only lower a new photo's distance, so the bound stays
true (conservative) for the gate served with all of them.
"""
from __future__ import annotations

import math
from typing import Dict

import numpy as np

DEFAULT_ALPHA = 0.02


def beta_cdf(x: float, a: int, b: int) -> float:
    """Regularised incomplete beta for integer a, b: P(Binomial(a + b - 1, x) >= a)."""
    n = a + b - 1
    return float(sum(math.comb(n, j) * x ** j * (1 - x) ** (n - j) for j in range(a, n + 1)))


def upper_rate(r: int, n: int, confidence: float) -> float:
    """The rejection rate the threshold stays under with probability `confidence` (a bisection on the Beta CDF)."""
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if 1.0 - beta_cdf(1.0 - mid, r, n + 1 - r) >= confidence:
            hi = mid
        else:
            lo = mid
    return hi


def conformal_threshold(scores: np.ndarray, alpha: float = DEFAULT_ALPHA, confidence: float = 0.9) -> Dict:
    """-> the threshold and what it promises, from n held-out cassava scores (higher: less leaf-like)."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(scores)
    if n < 1:
        raise ValueError("no held-out photos to set the gate's threshold on")
    r = min(n, math.ceil((n + 1) * (1 - alpha)))
    return {
        "threshold": float(scores[r - 1]), "alpha": alpha, "held_out": n, "rank": r,
        "expected_rate_at_most": (n + 1 - r) / (n + 1),
        "probability_rate_at_most_alpha": 1.0 - beta_cdf(1.0 - alpha, r, n + 1 - r),
        "confidence": confidence, "rate_at_most_with_confidence": upper_rate(r, n, confidence),
    }
