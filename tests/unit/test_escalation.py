"""The definition of "hard" (shared/escalation.py) on hand-computed values: the three scores, the curve, and the
threshold chosen for a target agreement; and the spec field a converted model may carry it in."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cassava.shared.errors import CassavaError
from cassava.shared.escalation import (
    at_threshold,
    candidate_thresholds,
    choose,
    confidence,
    curve,
    is_hard,
    point_for,
    threshold_for,
)
from cassava.shared.spec import ModelSpec

P = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])


def test_top_probability_and_margin():
    assert confidence(P, "top") == pytest.approx([0.7, 1 / 3, 0.5, 1.0])
    assert confidence(P, "margin") == pytest.approx([0.5, 0.0, 0.0, 1.0])


def test_entropy_confidence_is_one_minus_normalised_entropy():
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))  # 0.80182 nats
    expected = [1 - h / math.log(3), 0.0, 1 - math.log(2) / math.log(3), 1.0]  # 0.27015, 0, 0.36907, 1
    assert confidence(P, "entropy") == pytest.approx(expected, abs=1e-9)


def test_bad_scores_and_shapes_are_errors():
    with pytest.raises(ValueError, match="unknown confidence score 'max'"):
        confidence(P, "max")
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        confidence(np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="3 scores but 2"):
        curve([0.1, 0.2, 0.3], [True, False])


def test_hard_means_below_the_threshold():
    assert is_hard(P, 0.5).tolist() == [False, True, False, False]  # 0.5 itself is confident enough
    assert is_hard(P, 0.0).tolist() == [False] * 4


def test_candidate_thresholds_are_midpoints_between_distinct_scores():
    t = candidate_thresholds([0.9, 0.4, 0.6, 0.4])
    assert t[:3] == pytest.approx([0.0, 0.5, 0.75]) and 0.9 < t[3] < 0.9 + 1e-12 and len(t) == 4


def test_curve_counts_escalated_images_as_agreeing():
    points = curve([0.4, 0.6, 0.9, 0.95], [False, True, False, True])
    assert [p["escalated"] for p in points] == [0, 1, 2, 3, 4]
    assert [p["agreement"] for p in points] == [0.5, 0.75, 0.75, 1.0, 1.0]
    assert [p["fraction_escalated"] for p in points] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_threshold_for_sends_the_fewest_images_that_reach_the_target():
    scores, agreed = [0.4, 0.6, 0.9, 0.95], [False, True, False, True]
    assert threshold_for(scores, agreed, 0.5) == 0.0  # the edge alone already agrees on half
    assert threshold_for(scores, agreed, 0.75) == pytest.approx(0.5)  # only 0.4 goes
    assert threshold_for(scores, agreed, 1.0) == pytest.approx(0.925)  # 0.4, 0.6 and 0.9 go; 0.95 stays
    assert threshold_for([0.5, 0.5, 0.8], [False, True, True], 1.0) == pytest.approx(0.65)  # ties go together
    with pytest.raises(ValueError, match="between 0 and 1"):
        threshold_for(scores, agreed, 1.5)


def test_point_for_and_at_threshold_agree_with_the_curve():
    scores, agreed = [0.4, 0.6, 0.9, 0.95], [False, True, False, True]
    points = curve(scores, agreed)
    assert point_for(points, 0.75) == points[1] and point_for(points, 0.76) == points[3]
    assert at_threshold(scores, agreed, 0.925) == points[3]
    assert at_threshold(scores, agreed, 0.5) == {"threshold": 0.5, "escalated": 1, "fraction_escalated": 0.25,
                                                  "agreement": 0.75}


def test_choose_compares_the_edge_with_the_full_model_and_reports_the_curve():
    edge = np.array([[0.9, 0.1], [0.55, 0.45], [0.4, 0.6], [0.2, 0.8], [np.nan, 0.5]])
    full = np.array([[1.0, 0.0], [0.3, 0.7], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    # edge agrees on images 0 and 2; image 1 (confidence 0.55) and 3 (0.8) disagree; image 4 is NaN: confidence 0
    chosen = choose(edge, full, 0.995)
    assert chosen["edge_alone_agreement"] == pytest.approx(0.4) and chosen["images"] == 5
    assert chosen["threshold"] == pytest.approx(0.85)  # 0.8 must go, so 0.55, 0.6 and NaN go with it; 0.9 stays
    assert (chosen["escalated"], chosen["agreement"], chosen["fraction_escalated"]) == (4, 1.0, pytest.approx(0.8))
    assert chosen["curve"] == curve([0.9, 0.55, 0.6, 0.8, 0.0], [True, False, True, False, False])
    assert choose(edge, full, 0.6)["threshold"] == pytest.approx(0.275)  # the NaN image (confidence 0) goes first
    assert choose(edge, full, 0.4)["threshold"] == 0.0 and choose(edge, full, 0.4)["score"] == "top"


def test_the_spec_carries_a_threshold_and_checks_it():
    spec = ModelSpec.from_json({**ModelSpec().to_json(), "escalate_below": 0.8})
    assert spec.escalate_below == 0.8 and ModelSpec().escalate_below is None
    with pytest.raises(CassavaError, match="escalate_below is a confidence from 0 to 1"):
        ModelSpec(escalate_below=1.5)


# ---------------------------------------------------------------------------------------------- the edge's side


def test_the_cloud_gets_exactly_the_pixels_the_edge_judged():
    from cassava.edge.escalate import exact_pixels
    from cassava.shared.preprocess import to_model_input

    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    for scale in (1.0, 255.0):
        assert np.array_equal(exact_pixels(to_model_input(pixels, scale), scale), pixels)
    floats = to_model_input(pixels, 1.0)
    floats[0, 0, 0, 0] += 0.001  # a payload of floats that are not 8-bit pixels: only the floats are exact
    assert exact_pixels(floats, 1.0) is None


def test_escalation_settings_come_from_extra_or_the_spec():
    from cassava.edge.escalate import DEFAULT_TIMEOUT_S, EscalationSettings

    assert EscalationSettings.from_extra({}, ModelSpec()) is None  # no escalate_to: the edge answers alone
    from_spec = EscalationSettings.from_extra({"escalate_to": "http://c:8080"}, ModelSpec(escalate_below=0.7))
    assert from_spec.below == 0.7 and from_spec.timeout_s == DEFAULT_TIMEOUT_S and from_spec.wire == "compact"
    flag = EscalationSettings.from_extra({"escalate_to": "http://c:8080", "escalate_below": 0.4},
                                         ModelSpec(escalate_below=0.7))
    assert flag.below == 0.4  # --escalate-below overrides the model's own threshold
    with pytest.raises(CassavaError, match="needs a threshold.*--escalate-below P"):
        EscalationSettings.from_extra({"escalate_to": "http://c:8080"}, ModelSpec())
    with pytest.raises(CassavaError, match="a confidence from 0 to 1"):
        EscalationSettings.from_extra({"escalate_to": "http://c:8080", "escalate_below": 2}, ModelSpec())


def test_a_cloud_with_other_classes_or_size_is_refused():
    from cassava.edge.escalate import check_cloud
    from cassava.shared.protocol.transport import ModelInfo

    spec = ModelSpec(class_names=("a", "b", "c"))
    check_cloud(ModelInfo("cassava", 224, 3, parameters={"class_names": "a,b,c"}), spec, "http://c")
    check_cloud(ModelInfo("cassava", 224, 3), spec, "http://c")  # a V2 server that publishes no names: the count
    with pytest.raises(CassavaError, match=r"classes \(a,c,b\) differ from this edge model's \(a,b,c\)"):
        check_cloud(ModelInfo("cassava", 224, 3, parameters={"class_names": "a,c,b"}), spec, "http://c")
    with pytest.raises(CassavaError, match="takes 256x256 images, this edge model 224x224"):
        check_cloud(ModelInfo("cassava", 256, 3), spec, "http://c")
