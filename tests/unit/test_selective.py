"""The target-agreement search's pure parts (edge/selective.py): the k steps it tries, which float layers pull
their error-free followers along, and which copy it keeps."""
from __future__ import annotations

import pytest

from cassava.edge.selective import choose, prefix_sizes, with_free_followers


def _doubling(n: int) -> list:
    """The steps written out by hand: 0, then powers of two below n, then n itself."""
    steps = [0] + [2 ** i for i in range(n.bit_length()) if 2 ** i < n]
    return steps + [n] if n > 0 else [0]


@pytest.mark.parametrize("n, expected", [(0, [0]), (1, [0, 1]), (2, [0, 1, 2]), (3, [0, 1, 2, 3]),
                                         (5, [0, 1, 2, 4, 5]), (8, [0, 1, 2, 4, 8]), (9, [0, 1, 2, 4, 8, 9])])
def test_prefix_sizes_double_then_end_at_n(n, expected):
    assert list(prefix_sizes(n)) == expected


def test_prefix_sizes_match_the_rule_for_every_size_up_to_300():
    for n in range(301):
        steps = list(prefix_sizes(n))
        assert steps == _doubling(n), n
        assert steps == sorted(set(steps)) and steps[-1] == n  # strictly increasing, always ends with every layer


# A small graph: conv1 -> pool1 -> conv2 -> reshape -> dense; add joins conv1 and conv2.
GRAPH = {"conv1": [], "pool1": ["conv1"], "conv2": ["pool1"], "reshape": ["conv2"], "dense": ["reshape"],
         "add": ["conv1", "conv2"]}
RANKED = {"conv1", "conv2", "dense", "add"}  # layers with a quantization error of their own


def test_no_float_layers_keep_nothing():
    assert with_free_followers([], GRAPH, RANKED) == []


def test_an_error_free_layer_fed_only_by_a_float_layer_follows_it():
    assert with_free_followers(["conv1"], GRAPH, RANKED) == ["conv1", "pool1"]


def test_followers_are_added_transitively_and_ranked_layers_never():
    kept = with_free_followers(["conv2"], GRAPH, RANKED)
    assert kept == ["conv2", "reshape"]  # dense has an error of its own: it is the search's to keep, not this rule's
    kept = with_free_followers(["conv1", "conv2"], GRAPH, RANKED)
    assert set(kept) == {"conv1", "conv2", "pool1", "reshape"} and "add" not in kept


def test_a_layer_with_a_quantized_input_stays_quantized():
    graph = {"a": [], "b": [], "concat": ["a", "b"]}
    assert with_free_followers(["a"], graph, {"a", "b"}) == ["a"]
    assert sorted(with_free_followers(["a", "b"], graph, {"a", "b"})) == ["a", "b", "concat"]


def test_a_layer_with_no_inputs_is_never_pulled_in():
    assert with_free_followers(["conv1"], {"conv1": [], "const": []}, {"conv1"}) == ["conv1"]


def test_the_given_list_is_not_changed():
    layers = ["conv1"]
    with_free_followers(layers, GRAPH, RANKED)
    assert layers == ["conv1"]


def _trial(name, nbytes, agree, meets, float_layers=()):
    return {"name": name, "bytes": nbytes, "agree": agree, "meets_target": meets, "float_layers": list(float_layers)}


def test_plain_int8_that_meets_the_target_wins_even_over_a_smaller_dynamic_copy():
    int8, dynamic = _trial("int8", 500, 150, True), _trial("dynamic", 400, 150, True)
    assert choose(int8, dynamic, None, [int8, dynamic]) is int8


def test_int8_with_float_layers_wins_only_when_no_larger_than_dynamic():
    small = _trial("int8+2", 600, 149, True, ["a", "b"])
    dynamic = _trial("dynamic", 700, 149, True)
    assert choose(small, dynamic, None, [small, dynamic]) is small
    big = _trial("int8+9", 800, 149, True, list("abcdefghi"))
    assert choose(big, dynamic, None, [big, dynamic]) is dynamic
    same = _trial("int8+1", 700, 149, True, ["a"])
    assert choose(same, dynamic, None, [same, dynamic]) is same  # a tie keeps int8


def test_int8_with_float_layers_wins_when_dynamic_misses_or_was_not_tried():
    int8 = _trial("int8+3", 900, 149, True, ["a", "b", "c"])
    missed = _trial("dynamic", 400, 140, False)
    assert choose(int8, missed, None, [int8, missed]) is int8
    assert choose(int8, None, None, [int8]) is int8


def test_dynamic_then_float16_when_no_int8_copy_meets_the_target():
    dynamic, float16 = _trial("dynamic", 400, 149, True), _trial("float16", 800, 150, True)
    assert choose(None, dynamic, float16, [dynamic, float16]) is dynamic
    missed = _trial("dynamic", 400, 140, False)
    assert choose(None, missed, float16, [missed, float16]) is float16


def test_target_missed_keeps_the_highest_agreement_and_the_smaller_of_a_tie():
    a, b, c = _trial("a", 300, 140, False), _trial("b", 900, 145, False), _trial("c", 500, 145, False)
    assert choose(None, a, None, [a, b, c]) is c
    assert choose(None, None, None, [a]) is a


def test_nothing_tried_is_an_error_not_a_silent_choice():
    with pytest.raises(ValueError):
        choose(None, None, None, [])
