"""edge/outbox.py: durable (a real kill -9), bounded by bytes and age (oldest evicted first, counted), a corrupt file
moved aside with one warning line, memory that does not grow with the images held."""
from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
import tracemalloc

import pytest

from cassava.edge.outbox import AUDIT, HARD, Outbox
from cassava.shared.errors import CassavaError


def test_entries_come_back_oldest_first_with_their_payload_and_meta(tmp_path):
    box = Outbox(tmp_path)
    first = box.put(b"one", HARD, {"form": "original"})
    second = box.put(b"two", AUDIT)
    assert [e.id for e in box.entries()] == [first.id, second.id]
    box.close()
    again = Outbox(tmp_path)  # a restart
    assert [(e.id, e.kind, e.meta) for e in again.entries()] == [(first.id, HARD, {"form": "original"}),
                                                                 (second.id, AUDIT, {})]
    assert again.payload(again.entries()[0]) == b"one"
    assert again.remove(first.id) and not again.remove(first.id)
    again.close()
    assert [e.id for e in Outbox(tmp_path).entries()] == [second.id]


def test_ids_are_unguessable_and_distinct(tmp_path):
    box = Outbox(tmp_path)
    ids = {box.put(b"x").id for _ in range(50)}
    assert len(ids) == 50 and all(len(i) >= 20 for i in ids)


def test_entries_put_before_a_kill_9_survive_it(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from cassava.edge.outbox import Outbox
        box = Outbox({str(tmp_path)!r})
        for i in range(20):
            print(box.put(bytes([i]) * 1000).id, flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        ids = [child.stdout.readline().strip() for _ in range(20)]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    box = Outbox(tmp_path)
    assert [e.id for e in box.entries()] == ids
    assert [box.payload(e) for e in box.entries()] == [bytes([i]) * 1000 for i in range(20)]


def test_over_the_byte_budget_the_oldest_are_evicted_first_and_counted(tmp_path):
    evicted = []
    box = Outbox(tmp_path, max_bytes=5000, on_evict=evicted.append)
    ids = [box.put(b"x" * 900).id for _ in range(10)]
    assert box.bytes <= 5000 and box.evicted == len(evicted) > 0
    assert [e.id for e in evicted] == ids[:len(evicted)]
    assert [e.id for e in box.entries()] == ids[len(evicted):]
    assert len(list(tmp_path.glob("*.box"))) == len(box)


def test_past_the_age_budget_entries_are_evicted_also_at_start(tmp_path):
    now = [1000.0]
    box = Outbox(tmp_path, max_age_s=60, clock=lambda: now[0])
    old = box.put(b"old").id
    now[0] += 50
    young = box.put(b"young").id
    now[0] += 20
    assert box.expire() == 1 and [e.id for e in box.entries()] == [young]
    box.close()
    now[0] += 100
    restarted = Outbox(tmp_path, max_age_s=60, clock=lambda: now[0])
    assert len(restarted) == 0 and restarted.evicted == 1 and old not in restarted


def test_a_corrupt_file_is_moved_aside_with_one_warning_and_the_rest_kept(tmp_path, caplog):
    box = Outbox(tmp_path)
    good = box.put(b"good" * 100).id
    cut = box.put(b"cut" * 100)
    garbage = box.put(b"garbage")
    cut.path.write_bytes(cut.path.read_bytes()[:-10])  # a payload cut short
    garbage.path.write_bytes(b"\x00\xffnot json\n")
    (tmp_path / "000000000099-hard-half.tmp").write_bytes(b"half written")
    box.close()
    with caplog.at_level(logging.WARNING, logger="cassava.outbox"):
        again = Outbox(tmp_path)
    assert [e.id for e in again.entries()] == [good]
    assert len(caplog.records) == 1 and "2 unreadable entries moved" in caplog.records[0].getMessage()
    assert sorted(p.name for p in (tmp_path / "corrupt").iterdir()) == sorted([cut.path.name, garbage.path.name])
    assert not list(tmp_path.glob("*.tmp"))
    assert again.put(b"more").seq > again.entries()[0].seq  # serving goes on


def test_memory_does_not_grow_with_the_payloads_held(tmp_path):
    box = Outbox(tmp_path)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            box.put(b"p" * 100_000)  # 20 MB on disk
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert box.bytes > 20_000_000
    assert held < 1_000_000, f"{held:,} bytes held in memory for 20 MB of entries"


def test_one_process_per_outbox(tmp_path):
    box = Outbox(tmp_path)
    with pytest.raises(CassavaError, match="in use by another process"):
        Outbox(tmp_path)
    box.close()
    Outbox(tmp_path).close()


def test_bad_budgets_and_kinds_are_refused(tmp_path):
    with pytest.raises(ValueError):
        Outbox(tmp_path, max_bytes=0)
    with pytest.raises(ValueError):
        Outbox(tmp_path).put(b"x", "nonsense")
