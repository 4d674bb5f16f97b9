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
