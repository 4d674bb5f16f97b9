"""One-sided Clopper–Pearson bounds on an agreement rate: "with 95 % confidence, agreement is >= L" from k agreeing
of n. Exact binomial tails (no normal approximation): sound at the sample sizes the edge sees (tens to hundreds of
audits) and at rates near 100 %, where a Wald interval says nothing useful.

Pure numpy and math (no SciPy): the edge server computes these too, and its install has no SciPy. The bound is the
p solving a binomial tail equation, found by bisection on [0, 1] (monotone in p); 60 halvings reach float precision.
Checked in tests/unit/test_bounds.py against the closed forms (k = n: alpha ** (1/n)) and the Beta quantile.
"""
from __future__ import annotations

import math

import numpy as np

CONFIDENCE = 0.95


def lower_bound(agreed: int, n: int, confidence: float = CONFIDENCE) -> float:
    """The one-sided Clopper–Pearson lower bound: the smallest rate p with P(X >= agreed | n, p) >= 1 - confidence.
    0 when nothing agreed; 0 for n = 0 (no evidence promises nothing)."""
    agreed, n = _checked(agreed, n, confidence)
    if agreed == 0:
        return 0.0
    alpha = 1.0 - confidence
    if agreed == n:
        return alpha ** (1.0 / n)  # closed form: P(X = n) = p ** n
    log_choose = _log_choose(n)[agreed:]
    return _solve(lambda p: _tail_at_least(log_choose, agreed, n, p) - alpha)


def upper_bound(agreed: int, n: int, confidence: float = CONFIDENCE) -> float:
    """The one-sided Clopper–Pearson upper bound: the largest rate p with P(X <= agreed | n, p) >= 1 - confidence.
    1 when everything agreed; 1 for n = 0."""
    agreed, n = _checked(agreed, n, confidence)
    return 1.0 - lower_bound(n - agreed, n, confidence) if n else 1.0


def _checked(agreed, n, confidence):
    agreed, n = int(agreed), int(n)
    if n < 0 or not 0 <= agreed <= n:
        raise ValueError(f"need 0 <= agreed <= n, got {agreed} of {n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence is a fraction between 0 and 1, not {confidence}")
    return agreed, n


def _log_choose(n: int) -> np.ndarray:
    """log C(n, i) for i = 0..n, from cumulative log factorials."""
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])
    return log_factorial[n] - log_factorial - log_factorial[::-1]


def _tail_at_least(log_choose: np.ndarray, k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (no overflow at any n); log_choose[j] = log C(n, k+j)."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    i = np.arange(k, n + 1, dtype=np.float64)
    log_pmf = log_choose + i * math.log(p) + (n - i) * math.log1p(-p)
    top = log_pmf.max()
    return float(min(1.0, math.exp(top) * np.exp(log_pmf - top).sum()))


def _solve(f) -> float:
    """The root of an increasing f on [0, 1], by bisection."""
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if f(middle) < 0:
            low = middle
        else:
            high = middle
    return (low + high) / 2
