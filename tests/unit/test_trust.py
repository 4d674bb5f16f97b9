"""The edge's running trust (edge/trust.py): audited bounds as metrics, and self-protection that escalates more
while audits show agreement below the target, step by step up to a stated share, and returns when they recover."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from prometheus_client import REGISTRY

from cassava.edge.trust import Trust
from cassava.shared.bounds import lower_bound, upper_bound


def _gauge(name, **labels):
    return REGISTRY.get_sample_value(name, labels)


def _batch(rng=None, n=120):
    """3-class probabilities whose top confidence is spread evenly over [0.4, 1] (at random, or on a fixed grid)."""
    top = rng.uniform(0.4, 1.0, n) if rng is not None else np.linspace(0.4, 1.0, n)
    return np.stack([top, (1 - top) / 2, (1 - top) / 2], axis=1)


def test_a_healthy_edge_keeps_its_threshold_and_its_bound_tightens():
    trust = Trust("healthy", stored_below=0.5, target=0.95)
    rng = np.random.default_rng(1)
    for _ in range(10):
        assert trust.threshold(_batch(rng)) == 0.5
        trust.audited([True] * 10)
    assert _gauge("cassava_audited_agreement_bound", model_name="healthy", bound="lower") == pytest.approx(
        lower_bound(100, 100))
    assert _gauge("cassava_audited_window_audits", model_name="healthy") == 100
    assert _gauge("cassava_trust_protecting", model_name="healthy") == 0
    assert _gauge("cassava_escalate_below", model_name="healthy") == 0.5
    trust.audited([False])  # one disagreement in 101 is no evidence against 95 %
    assert trust.level == 0 and trust.threshold(_batch(rng)) == 0.5


def test_a_drop_raises_the_threshold_step_by_step_up_to_the_cap_says_so_once_and_recovers(caplog):
    caplog.set_level(logging.WARNING, logger="cassava.trust")
    trust = Trust("drop", stored_below=0.5, target=0.95, window=40, min_audits=20, step=0.05, max_share=0.3)
    rng = None  # the same photos' confidences every batch: the share a threshold sends is exact
    for _ in range(10):
        trust.threshold(_batch(rng))
    trust.audited([True] * 10 + [False] * 9)  # 19 audits: fewer than min_audits, whatever they say
    assert trust.level == 0
    trust.audited([False])  # 10 of 20: upper bound 71 % < 95 %
    assert upper_bound(10, 20) < 0.95 and trust.level == 1
    first = trust.threshold(_batch(rng))
    assert (np.asarray(trust.recent) < first).mean() == pytest.approx(1 / 6 + 0.05, abs=0.01)  # one step: 5 % more
    assert _gauge("cassava_trust_protecting", model_name="drop") == 1
    assert _gauge("cassava_escalate_below", model_name="drop") == first
    thresholds = [first]
    for _ in range(20):  # more bad audits: one step per min_audits // 2 audits, never beyond 30 % sent
        trust.audited([False] * 10)
        thresholds.append(trust.threshold(_batch(rng)))
    assert thresholds == sorted(thresholds) and thresholds[-1] > first
    recent = np.asarray(trust.recent)
    assert 0.3 - 0.02 <= (recent < thresholds[-1]).mean() <= 0.3  # it got to the stated cap, and no further
    assert _gauge("cassava_trust_protections_total", model_name="drop") == 1
    said = [r.getMessage() for r in caplog.records]
    assert sum("escalating more" in m for m in said) == 1  # once, not per step
    trust.audited([True] * 40)  # the bad audits leave the window: back to the stored threshold, said once
    assert trust.level == 0 and trust.threshold(_batch(rng)) == 0.5
    assert _gauge("cassava_trust_protecting", model_name="drop") == 0
    assert sum("again" in r.getMessage() for r in caplog.records) == 1


def test_the_target_is_the_copy_s_stored_bound_or_the_refusal_floor():
    assert Trust("spec", 0.5, target=0.97).target == 0.97
    assert Trust("nospec", 0.5, target=None).target == 0.95
    assert _gauge("cassava_audited_agreement_target", model_name="spec") == 0.97
