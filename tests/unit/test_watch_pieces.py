"""`cassava watch`'s pure pieces (edge/watch.py): the --every durations, which sources are live cameras, and the
folder poll that waits for a file to stop growing."""
from __future__ import annotations

import pytest

from cassava.edge.watch import folder_images, is_live, parse_interval
from cassava.shared.errors import CassavaError


@pytest.mark.parametrize("text, seconds", [("500ms", 0.5), ("2s", 2.0), ("2", 2.0), (" 1.5S ", 1.5), ("10ms", 0.01)])
def test_durations(text, seconds):
    assert parse_interval(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["0", "0ms", "-1s", "soon", "", "ms", "nan", "inf", "1h"])
def test_bad_durations_are_a_cassava_error(text):
    with pytest.raises(CassavaError, match="expected a positive duration"):
        parse_interval(text)


@pytest.mark.parametrize("source, live", [("camera:0", True), ("camera:12", True),
                                          ("camera:http://10.0.0.5/stream.mjpg", True),
                                          ("camera:rtsp://cam/1", True), ("camera:field.avi", False),
                                          ("camera:/videos/0.mp4", False)])
def test_live_cameras_are_indexes_and_streams(source, live):
    assert is_live(source) is live


def test_a_file_is_taken_once_its_size_held_still_for_a_poll(tmp_path):
    seen: dict = {}
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"12345")
    assert list(folder_images(tmp_path, set(), seen)) == []  # first sight: maybe still being written
    photo.write_bytes(b"1234567890")
    assert list(folder_images(tmp_path, set(), seen)) == []  # it grew: wait again
    assert list(folder_images(tmp_path, set(), seen)) == [("a.jpg", photo)]
    assert list(folder_images(tmp_path, {"a.jpg"}, seen)) == []  # already recorded
    (tmp_path / "notes.txt").write_text("x")
    assert [i for i, _ in folder_images(tmp_path, set(), seen)] == ["a.jpg"]  # not an image suffix: ignored


def test_audits_are_a_stable_fraction_of_the_photos():
    from cassava.shared.policy import audited

    ids = [f"IMG_{i:04d}.jpg" for i in range(4000)]
    chosen = [i for i in ids if audited(i, 0.05)]
    assert 150 <= len(chosen) <= 250  # 5% of 4000 = 200, binomial sd ~14
    assert chosen == [i for i in ids if audited(i, 0.05)]  # the same photos again (after a restart)
    assert set(i for i in ids if audited(i, 0.02)) <= set(chosen)  # a smaller rate audits a subset
    assert not any(audited(i, 0.0) for i in ids) and all(audited(i, 1.0) for i in ids)


def test_a_record_says_whether_its_photo_escalates_and_who_answered():
    import numpy as np

    from cassava.edge.watch import escalation_of
    from cassava.shared.policy import EscalationPolicy

    def policy(below, rate):
        return EscalationPolicy(escalate_below=below, audit_rate=rate)

    assert escalation_of(np.array([0.5, 0.3, 0.2]), "a.jpg", policy(0.6, 0.0)) == {
        "confidence": 0.5, "escalate": "hard", "answered_by": "edge-provisional"}
    assert escalation_of(np.array([0.9, 0.1]), "a.jpg", policy(0.6, 0.0))["escalate"] is None
    assert escalation_of(np.array([0.9, 0.1]), "a.jpg", policy(0.6, 1.0)) == {
        "confidence": 0.9, "escalate": "audit", "answered_by": "edge"}


def test_settled_summary_counts_hard_audits_and_bytes():
    from cassava.edge.watch import settled_summary

    settled = [{"status": 200, "reason": "hard", "bytes": 1000, "agree": False},
               {"status": 200, "reason": "audit", "bytes": 3000, "agree": True},
               {"status": 200, "reason": "audit", "bytes": 2000, "agree": False},
               {"status": 413, "reason": "hard", "bytes": 9}]
    assert settled_summary(settled) == ("1 hard photo(s) settled by the cloud; 2 audited: the edge agreed on 1/2; "
                                        "2,000 bytes per escalation")


def test_a_line_cut_by_power_loss_does_not_swallow_the_next_record(tmp_path):
    from cassava.edge.watch import ResultLog

    path = tmp_path / "log.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "ti')
    log = ResultLog(path)
    assert log.ids() == {"a"}
    log.append({"id": "c"})
    log.close()
    assert ResultLog(path).ids() == {"a", "c"}
