"""edge/settlement.py: a record per id, final once settled (a second answer is refused: a duplicate), kept a stated
time and bounded; unknown or malformed ids are None (the REST extension's 404)."""
from __future__ import annotations

import os
import time

from cassava.edge.settlement import PENDING, PROVISIONAL, SETTLED, SettlementStore

EDGE = {"prediction": "cbb", "probability": 0.4, "probabilities": [0.4, 0.3, 0.3]}
CLOUD = {"prediction": "cmd", "probability": 0.9, "probabilities": [0.05, 0.05, 0.9]}


def test_pending_then_settled_once(tmp_path):
    store = SettlementStore(tmp_path)
    store.pending("abcdefgh12", EDGE, time.time())
    assert store.get("abcdefgh12")["status"] == PENDING and store.get("abcdefgh12")["prediction"] == "cbb"
    record = store.settle("abcdefgh12", CLOUD, EDGE, time.time() - 3)
    assert record["status"] == SETTLED and record["answered_by"] == "cloud" and record["prediction"] == "cmd"
    assert record["edge"]["prediction"] == "cbb" and record["settle_seconds"] >= 3
    assert store.settle("abcdefgh12", {**CLOUD, "prediction": "cbb"}, EDGE, time.time()) is None  # a duplicate
    assert SettlementStore(tmp_path).get("abcdefgh12")["prediction"] == "cmd"  # survives a restart


def test_kept_provisional_is_final_too(tmp_path):
    store = SettlementStore(tmp_path)
    record = store.keep_provisional("abcdefgh12", EDGE, time.time(), "evicted")
    assert record["status"] == PROVISIONAL and record["answered_by"] == "edge-provisional"
    assert store.settle("abcdefgh12", CLOUD, EDGE, time.time()) is None


def test_unknown_or_malformed_ids_are_none(tmp_path):
    store = SettlementStore(tmp_path)
    assert store.get("neverseen123") is None
    assert store.get("../../etc/passwd") is None and store.get("") is None


def test_records_are_kept_a_stated_time_and_bounded(tmp_path):
    store = SettlementStore(tmp_path, keep_s=60, max_records=3)
    for i in range(5):
        store.pending(f"record-{i:04d}", EDGE, time.time())
        os.utime(tmp_path / f"record-{i:04d}.json", (1000 + i, 1000 + i))
    assert store.sweep(now=1000 + 30) == 2  # none expired; the two oldest beyond 3 records go
    assert [store.get(f"record-{i:04d}") is not None for i in range(5)] == [False, False, True, True, True]
    assert store.sweep(now=1000 + 1000) == 3
