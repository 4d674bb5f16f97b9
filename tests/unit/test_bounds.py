"""Clopper–Pearson bounds (shared/bounds.py) against closed forms and the Beta quantile, and the threshold chosen
with a margin (shared/escalation.py `with_margin`, `choose(..., margin=)`) on hand-computed examples."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cassava.shared.bounds import lower_bound, upper_bound
from cassava.shared.escalation import choose, kept_bound, threshold_for, with_margin


def _beta_cdf(x: float, a: int, b: int) -> float:
    """The regularized incomplete beta I_x(a, b) by numerical integration of the Beta density (an independent path)."""
    grid = np.linspace(0.0, x, 400001)[1:]
    log_pdf = (a - 1) * np.log(grid) + (b - 1) * np.log1p(-grid) - (math.lgamma(a) + math.lgamma(b)
                                                                       - math.lgamma(a + b))
    return float(np.sum(np.exp(log_pdf)) * (grid[1] - grid[0]))


def test_closed_forms_when_everything_or_nothing_agreed():
    assert lower_bound(150, 150) == pytest.approx(0.05 ** (1 / 150))  # 98.0 %: all 150 held-out photos agree
    assert upper_bound(0, 10) == pytest.approx(1 - 0.05 ** (1 / 10))
    assert (lower_bound(0, 10), upper_bound(10, 10), lower_bound(0, 0), upper_bound(0, 0)) == (0.0, 1.0, 0.0, 1.0)
    assert lower_bound(597, 597) < 0.995 <= lower_bound(598, 598)  # what proving 99.5 % takes


@pytest.mark.parametrize("k, n", [(5, 10), (149, 150), (290, 300), (18, 20)])
def test_the_lower_bound_is_the_beta_quantile(k, n):
    # Clopper–Pearson: lower = Beta(k, n - k + 1).ppf(alpha), so the Beta CDF there is alpha
    low = lower_bound(k, n)
    assert _beta_cdf(low, k, n - k + 1) == pytest.approx(0.05, abs=2e-4)
    assert upper_bound(k, n) == pytest.approx(1 - lower_bound(n - k, n))  # symmetry
    assert low < k / n < upper_bound(k, n)
    assert lower_bound(k, n, 0.99) < low  # more confidence, a wider margin


def test_bad_counts_are_refused():
    for agreed, n in ((3, 2), (-1, 5)):
        with pytest.raises(ValueError):
            lower_bound(agreed, n)
    with pytest.raises(ValueError):
        lower_bound(1, 2, confidence=1.0)


def test_kept_bound_counts_only_the_images_the_edge_keeps():
    scores, agreed = [0.3, 0.6, 0.9, 0.95], [False, True, True, True]
    assert kept_bound(scores, agreed, 0.5, 0.95) == {"confidence": 0.95, "kept": 3, "kept_agreed": 3,
                                                     "lower": pytest.approx(0.05 ** (1 / 3))}
    assert kept_bound(scores, agreed, 0.0, 0.95)["kept_agreed"] == 3


def test_a_target_the_bound_can_prove_is_met_by_the_bound():
    # 1000 images, the 20 least confident disagree: the point estimate keeps everything from score 0.02 up
    scores = np.linspace(0.0, 1.0, 1000)
    agreed = scores >= 0.02
    chosen = with_margin(scores, agreed, 0.99, 0.95)
    assert chosen["certified"] and chosen["lower"] >= 0.99 and chosen["rule"] == "bound"
    assert chosen["threshold"] >= threshold_for(scores, agreed, 0.99)
    # the smallest such threshold: the one before it (one more image kept) does not prove 99 %
    kept = int((scores >= chosen["threshold"]).sum())
    before = np.sort(scores)[::-1][kept] - 1e-9
    assert kept_bound(scores, agreed, before, 0.95)["lower"] < 0.99


def test_too_few_images_take_the_highest_bound_at_or_above_the_point_estimate():
    # 300 images, 3 disagreements. 99.5 % allows 1: the point estimate sends the two least confident (0 and 1) and
    # keeps 297 agreeing of 298; nothing proves 99.5 % with 300 images
    scores = np.linspace(0.0, 1.0, 300)
    agreed = np.ones(300, dtype=bool)
    agreed[[0, 1, 60]] = False
    point = threshold_for(scores, agreed, 0.995)
    assert (scores >= point).sum() == 298
    # sending 59 more (to image 60) leaves 239 of 239 agreeing: a higher bound than 297 of 298, so the margin pays it
    chosen = with_margin(scores, agreed, 0.995, 0.95)
    assert not chosen["certified"] and (chosen["kept"], chosen["kept_agreed"]) == (239, 239)
    assert chosen["lower"] == pytest.approx(0.05 ** (1 / 239)) and chosen["lower"] > lower_bound(297, 298)
    # when the last disagreement is confident (image 270), removing it would leave 29: the point estimate stands
    agreed[60], agreed[270] = True, False
    chosen = with_margin(scores, agreed, 0.995, 0.95)
    assert chosen["threshold"] == pytest.approx(threshold_for(scores, agreed, 0.995)) and chosen["kept"] == 298


def test_choose_with_a_margin_reports_it_and_without_one_stays_the_point_estimate():
    rng = np.random.default_rng(0)
    full = rng.dirichlet(np.ones(5), 150)
    edge = full + rng.normal(0, 0.05, full.shape)
    plain = choose(edge, full, 0.995)
    margin = choose(edge, full, 0.995, margin=0.95)
    assert plain["margin"] is None
    m = margin["margin"]
    assert m["point_threshold"] == pytest.approx(plain["threshold"]) and margin["threshold"] >= plain["threshold"]
    assert m["kept"] == 150 - margin["escalated"] and not m["certified"]  # 150 images cannot prove 99.5 %
    assert m["lower"] == pytest.approx(lower_bound(m["kept_agreed"], m["kept"]))
