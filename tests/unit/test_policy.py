"""The edge's one decision per image (shared/policy.py): unknown before hard before audit before edge."""
import numpy as np
import pytest

from cassava.shared.errors import CassavaError
from cassava.shared.policy import AUDIT, EDGE, HARD, UNKNOWN, EscalationPolicy


def test_decisions_in_order_of_precedence():
    p = np.array([[0.5, 0.5], [0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    policy = EscalationPolicy(escalate_below=0.7, audit_rate=1.0, gate_threshold=0.3)
    assert policy.decide(p, ["a", "b", "c", "d"], gate_distances=[0.1, 0.1, 0.5, 0.9]) == [HARD, AUDIT, UNKNOWN,
                                                                                           UNKNOWN]
    assert EscalationPolicy(escalate_below=0.7, audit_rate=0.0).decide(p, list("abcd")) == [HARD, EDGE, EDGE, HARD]


def test_audit_is_a_hash_of_the_id_not_a_draw():
    ids = [f"photo-{i}" for i in range(2000)]
    p = np.tile([[0.99, 0.01]], (len(ids), 1))
    first = EscalationPolicy(audit_rate=0.05).decide(p, ids)
    assert first == EscalationPolicy(audit_rate=0.05).decide(p, ids)
    assert 0.03 < first.count(AUDIT) / len(ids) < 0.07


@pytest.mark.parametrize("kwargs, flag", [({"escalate_below": 1.5}, "--escalate-below"),
                                          ({"audit_rate": -0.1}, "--audit-rate"),
                                          ({"gate_threshold": float("nan")}, "gate threshold")])
def test_bad_settings_are_refused_once_where_made(kwargs, flag):
    with pytest.raises(CassavaError, match=flag):
        EscalationPolicy(**kwargs)


def test_with_threshold_keeps_the_rest():
    policy = EscalationPolicy(escalate_below=0.5, audit_rate=0.1, gate_threshold=0.2).with_threshold(0.8)
    assert (policy.escalate_below, policy.audit_rate, policy.gate_threshold) == (0.8, 0.1, 0.2)
