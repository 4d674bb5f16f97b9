"""`cassava watch` on the edge: folder and camera (video file) sources, restarts, store-and-forward to the cloud."""
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from helpers import BIN, REPO, LoopbackServer, converted, standin_args

pytestmark = pytest.mark.slow


def _lines(path: Path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait_for(predicate, timeout=240.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def _drop(photo: Path, folder: Path):
    """Copy under a temporary name, then rename: how a camera app or rsync lands a complete file."""
    tmp = folder / f".{photo.name}.part"
    shutil.copyfile(photo, tmp)
    os.replace(tmp, folder / photo.name)


def _watch(model, source, out, *extra, env=None, stderr=subprocess.PIPE):
    return subprocess.Popen([str(BIN / "cassava"), "watch", "--model", str(model), "--source", str(source),
                             "--out", str(out), "--every", "200ms", "--duration", "240", *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})


def _one_line_error(proc, words: str):
    """The watch ended with exit code 2 and one line saying `words` (OpenCV's own noise aside)."""
    _, err = proc.communicate(timeout=240)
    lines = [line for line in err.splitlines() if line.startswith("cassava watch: error:")]
    assert proc.returncode == 2, err
    assert len(lines) == 1 and words in lines[0], err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def watch_model(standin_model, tmp_path_factory):
    """The int8 TFLite stand-in, as a Pi would run it (converted once per session, shared with the edge tests)."""
    conversions = tmp_path_factory.getbasetemp() / "conversions"
    return converted(conversions, "standin-int8", *standin_args("int8")) / "model.tflite"


@pytest.fixture(scope="module")
def photos(standin_data):
    """Six of the stand-in's synthetic photos (JPEG files, two classes): what the watch does needs no real ones."""
    return sorted(standin_data.glob("cbb/*.jpg"))[:3] + sorted(standin_data.glob("cmd/*.jpg"))[:3]


def test_folder_watch_survives_a_restart_without_repeats(watch_model, photos, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "results.jsonl"
    inbox.mkdir()
    first = _watch(watch_model, inbox, out)
    try:
        for photo in photos[:3]:
            _drop(photo, inbox)
        _wait_for(lambda: len(_lines(out)) >= 3, what="3 results")
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # power loss mid-run
        first.wait(10)
    for photo in photos[3:]:
        _drop(photo, inbox)
    second = _watch(watch_model, inbox, out, "--max-images", "3")
    _, err = second.communicate(timeout=240)
    assert second.returncode == 0, err
    records = _lines(out)
    assert sorted(r["file"] for r in records) == sorted(p.name for p in photos)  # each exactly once
    for record in records:
        assert len(record["top"]) == 3 and record["latency_ms"] > 0
        probabilities = [t["probability"] for t in record["top"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert {"class", "name", "probability"} <= set(record["top"][0])


def test_unreadable_file_is_recorded_not_dropped(watch_model, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "results.jsonl"
    inbox.mkdir()
    (inbox / "garbage.jpg").write_bytes(b"definitely not a jpeg")
    proc = _watch(watch_model, inbox, out, "--max-images", "1")
    proc.communicate(timeout=240)
    records = _lines(out)
    assert len(records) == 1 and records[0]["file"] == "garbage.jpg" and "not an image" in records[0]["error"]


def test_camera_path_with_a_video_file(watch_model, standin_data, tmp_path):
    import cv2  # the [camera] extra, part of [dev]

    from cassava.shared.preprocess import preprocess

    video = tmp_path / "field.avi"
    frames = [preprocess(p, 224) for p in sorted(standin_data.glob("cmd/*.jpg"))[:5]]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (224, 224))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    out = tmp_path / "camera.jsonl"
    proc = _watch(watch_model, f"camera:{video}", out)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    records = _lines(out)
    assert [r["file"] for r in records] == [f"frame-{i:06d}" for i in range(1, 6)]
    assert sum(r["top"][0]["class"] == "cmd" for r in records) >= 4  # stand-in model, synthetic data
    assert all(Path(r["path"]).is_file() for r in records)
    # A restart on the same --out numbers on from the last frame: no frame id, and no saved frame, is reused.
    again = _watch(watch_model, f"camera:{video}", out)
    _, err = again.communicate(timeout=240)
    assert again.returncode == 0, err
    records = _lines(out)
    assert [r["file"] for r in records] == [f"frame-{i:06d}" for i in range(1, 11)]
    assert len({r["path"] for r in records}) == 10 and all(Path(r["path"]).is_file() for r in records)
    assert [r["top"][0]["class"] for r in records[5:]] == [r["top"][0]["class"] for r in records[:5]]


class MjpegCamera(ThreadingHTTPServer):
    """A network camera on loopback: an MJPEG stream over HTTP (as IP cameras serve it) of `frames` JPEG frames,
    after which it drops the connection, as a camera that loses power or network does."""

    def __init__(self, frames):
        super().__init__(("127.0.0.1", 0), _MjpegHandler)
        self.frames = frames
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/stream.mjpg"


class _MjpegHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        for frame in self.server.frames:
            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(frame)
                             + frame + b"\r\n")
            self.wfile.flush()


def test_a_camera_lost_mid_run_is_an_error_exit_with_the_results_kept(watch_model, photos, tmp_path):
    frames = [p.read_bytes() for p in photos[:3]]
    camera = MjpegCamera(frames)
    out = tmp_path / "camera.jsonl"
    try:
        proc = _watch(watch_model, f"camera:{camera.url}", out, "--every", "50ms")
        _one_line_error(proc, f"--source camera:{camera.url}: the camera stopped sending frames after 3 frame(s) "
                              f"in this run; results so far are in {out}")
    finally:
        camera.shutdown()
    records = _lines(out)
    assert [r["file"] for r in records] == ["frame-000001", "frame-000002", "frame-000003"]
    assert all(len(r["top"]) == 3 and Path(r["path"]).is_file() for r in records)


@pytest.mark.parametrize("source, words", [
    ("camera:63", "--source camera:63: cannot open the camera or video"),  # a device index no machine here has
    ("camera:@missing.avi", "cannot open the camera or video"),
])
def test_a_camera_that_does_not_open_is_one_line(watch_model, tmp_path, source, words):
    source = source.replace("@", f"{tmp_path}/")
    _one_line_error(_watch(watch_model, source, tmp_path / "out.jsonl"), words)


def test_camera_sources_without_opencv_say_how_to_install_it(watch_model, tmp_path):
    blocked = tmp_path / "blocked"
    (blocked / "cv2").mkdir(parents=True)
    (blocked / "cv2" / "__init__.py").write_text('raise ImportError("cv2 is blocked in this test")\n')
    proc = _watch(watch_model, "camera:0", tmp_path / "out.jsonl", env={"PYTHONPATH": str(blocked)})
    _one_line_error(proc, "camera sources need OpenCV: pip install 'cassava-cloud-edge[camera]'")


@pytest.mark.parametrize("every", ["0", "-1s", "soon", "nan"])
def test_a_bad_every_is_one_line_before_anything_runs(watch_model, tmp_path, every):
    out = tmp_path / "out.jsonl"
    _one_line_error(_watch(watch_model, tmp_path, out, f"--every={every}"), f"--every {every!r}: expected a positive")
    assert not out.exists()


def test_forward_keeps_a_backlog_while_the_cloud_is_down(watch_model, photos, tmp_path):
    settings = json.loads((REPO / "cloud" / "model-settings.json").read_text())
    settings["parameters"]["uri"] = "standin"
    cloud = LoopbackServer.mlserver(tmp_path / "cloud", settings).start()
    inbox, out = tmp_path / "inbox", tmp_path / "results.jsonl"
    forwarded = tmp_path / "results.forwarded.jsonl"
    inbox.mkdir()
    stderr = tmp_path / "watch.stderr"
    with open(stderr, "w") as handle:
        proc = _watch(watch_model, inbox, out, "--forward", cloud.url, stderr=handle)
    try:
        for photo in photos[:2]:
            _drop(photo, inbox)
        _wait_for(lambda: len(_lines(forwarded)) >= 2, what="2 forwarded")
        cloud.stop()  # the uplink goes down
        for photo in photos[2:4]:
            _drop(photo, inbox)
        _wait_for(lambda: len(_lines(out)) >= 4, what="4 results while offline")
        # The watch found the cloud gone with a backlog (its own line says so): no clock to guess at.
        _wait_for(lambda: "paused: the cloud does not answer" in stderr.read_text(), what="forwarding paused")
        assert len(_lines(forwarded)) == 2  # the two new ones wait in the backlog
        cloud.start()  # and comes back
        _wait_for(lambda: len(_lines(forwarded)) >= 4, what="backlog delivered")
        assert "resumed" in stderr.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        cloud.stop()
    sent = _lines(forwarded)
    assert sorted(r["id"] for r in sent) == sorted(p.name for p in photos[:4])  # nothing lost or duplicated
    assert all(r["status"] == 200 and r["cloud_prediction"] for r in sent)


def test_a_photo_the_cloud_refuses_is_recorded_once_and_the_rest_still_go(watch_model, photos, tmp_path):
    """The forwarder's rejected branch, on a real cloud whose request-body limit (CASSAVA_MAX_REQUEST_BYTES) is below
    one large photo: that photo's refusal (413) is recorded with the cloud's reason and never sent again, the photos
    after it are forwarded, and the cloud keeps serving."""
    import numpy as np
    from PIL import Image

    settings = json.loads((REPO / "cloud" / "model-settings.json").read_text())
    settings["parameters"]["uri"] = "standin"
    cloud = LoopbackServer.mlserver(tmp_path / "cloud", settings, env={"CASSAVA_MAX_REQUEST_BYTES": "200000"}).start()
    inbox, out = tmp_path / "inbox", tmp_path / "results.jsonl"
    forwarded = tmp_path / "results.forwarded.jsonl"
    inbox.mkdir()
    large = tmp_path / "large.png"  # ~1 MB of noise: the edge classifies it, the cloud's limit refuses it
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)).save(large)
    proc = _watch(watch_model, inbox, out, "--forward", cloud.url)
    try:
        _drop(photos[0], inbox)
        _wait_for(lambda: len(_lines(forwarded)) >= 1, what="the first photo forwarded")
        _drop(large, inbox)
        _wait_for(lambda: len(_lines(forwarded)) >= 2, what="the large photo's refusal")
        _drop(photos[1], inbox)
        _wait_for(lambda: len(_lines(forwarded)) >= 3, what="the photo after it forwarded")
        answered = len(_lines(out))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        served_after = cloud.alive()
        cloud.stop()
    sent = {r["id"]: r for r in _lines(forwarded)}
    assert len(_lines(forwarded)) == 3 == answered  # each photo once, the refused one included, none retried
    refused = sent["large.png"]
    assert refused["status"] == 413 and "above the limit of 200,000 bytes" in refused["error"]
    assert "cloud_prediction" not in refused
    for photo in photos[:2]:
        assert sent[photo.name]["status"] == 200 and sent[photo.name]["cloud_prediction"]
    assert served_after


def test_escalate_to_settles_each_hard_or_audited_photo_once_across_kill_9_and_an_outage(watch_model, photos,
                                                                                           tmp_path):
    """Only the hard photos (threshold between the 3rd and 4th lowest confidence of the six) and the audited ones go
    to a real cloud; the watch is killed with SIGKILL twice, the cloud is down in between; at the end every one of
    them has exactly one settled line, and no other photo has any."""
    from cassava.edge.interpreter import load_tflite_classifier
    from cassava.edge.watch import audited
    from cassava.shared.classifier import predict_pixels
    from cassava.shared.preprocess import preprocess

    model = load_tflite_classifier(watch_model.parent)
    top = predict_pixels(model, np.stack([preprocess(p, 224) for p in photos])).max(axis=1)
    cut = np.sort(top)
    assert cut[2] < cut[3], "two photos with the same confidence at the cut"
    below, rate = float(cut[2] + cut[3]) / 2, 0.5
    hard = {p.name for p, t in zip(photos, top) if t < below}
    audit = {p.name for p, t in zip(photos, top) if t >= below and audited(p.name, rate)}
    assert audit, "the audit rate picked none of the confident photos: the audit path would go untested"
    wanted = lambda names: (hard | audit) & set(names)  # noqa: E731

    settings = json.loads((REPO / "cloud" / "model-settings.json").read_text())
    settings["parameters"]["uri"] = "standin"
    cloud = LoopbackServer.mlserver(tmp_path / "cloud", settings).start()
    inbox, out, settled = tmp_path / "inbox", tmp_path / "results.jsonl", tmp_path / "results.settled.jsonl"
    inbox.mkdir()
    stderr = tmp_path / "watch.stderr"
    args = ("--escalate-to", cloud.url, "--escalate-below", below, "--audit-rate", rate)

    def start():
        with open(stderr, "w") as handle:
            return _watch(watch_model, inbox, out, *args, stderr=handle)

    names = [p.name for p in photos]
    proc = start()
    try:
        for photo in photos[:2]:
            _drop(photo, inbox)
        _wait_for(lambda: len(_lines(out)) >= 2 and len(_lines(settled)) >= len(wanted(names[:2])), what="2 settled")
        os.killpg(proc.pid, signal.SIGKILL)  # power loss
        proc.wait(10)
        cloud.stop()  # and the uplink is down when it comes back
        for photo in photos[2:4]:
            _drop(photo, inbox)
        proc = start()
        _wait_for(lambda: len(_lines(out)) >= 4, what="4 results while offline")
        if wanted(names[2:4]):
            _wait_for(lambda: "paused: the cloud does not answer" in stderr.read_text(), what="escalation paused")
        assert {r["id"] for r in _lines(settled)} == wanted(names[:2])
        cloud.start()
        _wait_for(lambda: len(_lines(settled)) >= len(wanted(names[:4])), what="the backlog settled")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for photo in photos[4:]:
            _drop(photo, inbox)
        with open(stderr, "w") as handle:
            last = _watch(watch_model, inbox, out, *args, "--max-images", "2", stderr=handle)
        assert last.wait(240) == 0, stderr.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        cloud.stop()
    records = {r["id"]: r for r in _lines(out)}
    assert sorted(r["id"] for r in _lines(out)) == sorted(names)  # each classified once
    for name, record in records.items():
        expected = "hard" if name in hard else "audit" if name in audit else None
        assert record["escalate"] == expected
        assert record["answered_by"] == ("edge-provisional" if name in hard else "edge")
    lines = _lines(settled)
    assert sorted(r["id"] for r in lines) == sorted(hard | audit)  # each settled exactly once, no other photo
    for line in lines:
        assert line["status"] == 200 and line["cloud_prediction"] and line["reason"] == records[line["id"]]["escalate"]
        assert line["bytes"] == (inbox / line["id"]).stat().st_size  # the original file went
    assert f"{len(hard)} hard photo(s) settled by the cloud; {len(audit)} audited" in stderr.read_text()


def test_escalate_to_needs_a_threshold_and_excludes_forward(watch_model, tmp_path):
    out = tmp_path / "out.jsonl"
    _one_line_error(_watch(watch_model, tmp_path, out, "--escalate-to", "http://127.0.0.1:9", "--forward",
                           "http://127.0.0.1:9"), "--forward sends every photo, --escalate-to only the hard ones")
    _one_line_error(_watch(watch_model, tmp_path, out, "--audit-rate", "0.5"), "need --escalate-to URL")
    _one_line_error(_watch(watch_model, tmp_path, out, "--escalate-to", "http://127.0.0.1:9", "--audit-rate", "2"),
                    "--audit-rate 2.0: a fraction from 0 to 1")
