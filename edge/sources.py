"""Where `cassava watch` gets its images: new files in a folder, or frames from a camera (or a video file)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator, Tuple

from cassava.shared.data import IMAGE_SUFFIXES
from cassava.shared.errors import CassavaError


def parse_interval(text: str) -> float:
    """`500ms`, `2s` or `2` -> seconds; anything else, or not a positive finite time, is a one-line error."""
    text = text.strip().lower()
    try:
        if text.endswith("ms"):
            seconds = float(text[:-2]) / 1000.0
        else:
            seconds = float(text[:-1]) if text.endswith("s") else float(text)
    except ValueError:
        seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise CassavaError(f"--every {text!r}: expected a positive duration like 500ms or 2s")
    return seconds


def folder_images(folder: Path, done: set, seen_sizes: dict) -> Iterator[Tuple[str, Path]]:
    """New image files, oldest first; a file still growing (size changed since the last poll) waits a round."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    for path in sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name)):
        image_id = path.name
        if image_id in done:
            continue
        size = path.stat().st_size
        if seen_sizes.get(image_id) != size:
            seen_sizes[image_id] = size  # see it again at the same size before trusting it is complete
            continue
        yield image_id, path


def is_live(source: str) -> bool:
    """camera:0 (a device index) or camera:URL (a network camera's stream): frames arrive in real time, and the
    stream ending means the camera was lost. camera:FILE is a recording, read to its end."""
    target = source[len("camera:"):]
    return target.isdigit() or "://" in target


def open_camera(source: str):
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # our one-line error says it; OpenCV's own warnings need not
    try:
        import cv2
    except ImportError:
        raise CassavaError("camera sources need OpenCV: pip install 'cassava-cloud-edge[camera]'") from None
    target = source[len("camera:"):]
    capture = cv2.VideoCapture(int(target) if target.isdigit() else target)
    if not capture.isOpened():
        raise CassavaError(f"--source {source}: cannot open the camera or video")
    return capture, cv2


class CameraFrames:
    """Frames from `camera:...`, each saved as a lossless PNG (so it can go to the cloud later) and numbered on
    from the journal's last camera frame. `next()` -> (id, RGB pixels, path), or None at the end of a video file."""

    def __init__(self, source: str, frames_dir: Path, numbered_from: int):
        self.source, self.frames_dir, self.number = source, frames_dir, numbered_from
        self.capture, self.cv2 = open_camera(source)
        frames_dir.mkdir(parents=True, exist_ok=True)

    def next(self, taken_so_far: int, out: Path):
        ok, frame = self.capture.read()
        if not ok and is_live(self.source):  # a live camera does not end: it was unplugged or went offline
            raise CassavaError(f"--source {self.source}: the camera stopped sending frames after {taken_so_far} "
                               f"frame(s) in this run; results so far are in {out}")
        if not ok:
            return None  # the video file is finished
        from PIL import Image

        self.number += 1
        image_id = f"frame-{self.number:06d}"
        path = self.frames_dir / f"{image_id}.png"
        rgb = self.cv2.cvtColor(frame, self.cv2.COLOR_BGR2RGB)
        Image.fromarray(rgb).save(path)  # kept so the photo can be forwarded or audited later
        return image_id, rgb, path

    def release(self) -> None:
        self.capture.release()
