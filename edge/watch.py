"""`cassava watch`: classify camera frames or new photos in a folder on the edge device, with no server or network.

Each image becomes one JSON line in `--out` (append-only, flushed and fsynced): time, file or frame id, the top-3
classes with probabilities, and the latency. That file is the record of what was done: after a restart, files
already in it are not classified again. With `--forward URL`, each photo and the edge's answer are also sent to the
cloud model (a second opinion from the full model); the cloud's answers go to `<out>.forwarded.jsonl`. The backlog
is whatever is in `--out` but not yet forwarded, so a device with intermittent connectivity loses nothing: it is
re-derived at start-up and drained, oldest first, whenever the cloud answers.

With `--escalate-to URL` instead (joint inference, README), only the hard photos go (the edge model's top probability
below the threshold: `--escalate-below`, else the model's `escalate_below` from `cassava convert`), plus a fraction
`--audit-rate` of the confident ones to measure how often the edge agrees with the cloud where it was sure. The
choice is made when the photo is classified and written in its record (`escalate`: hard or audit), so a restart
re-derives the same backlog; the cloud's answers go to `<out>.settled.jsonl`, the same store-and-forward.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

from cassava.shared.arguments import add_escalation_arguments
from cassava.shared.data import IMAGE_SUFFIXES
from cassava.shared.errors import BadImage, CassavaError
from cassava.shared.escalation import DEFAULT_AUDIT_RATE
from cassava.shared.policy import AUDIT, HARD, EscalationPolicy

TOP_K = 3


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="model.tflite or a converted dir (any MODEL works)")
    parser.add_argument("--source", required=True,
                        help="DIR (new image files), camera:0 (a camera index) "
                             "or camera:FILE (a video file, read like a camera)")
    parser.add_argument("--every", default="2s", help="poll the folder / take a frame this often (e.g. 500ms, 2s)")
    parser.add_argument("--out", type=Path, default=Path("results.jsonl"),
                        help="append one JSON line per image here")
    parser.add_argument("--forward", metavar="URL",
                        help="also send each photo to this cloud base URL (store-and-forward)")
    add_escalation_arguments(parser, "photos", "send only the hard photos (and --audit-rate of the confident ones) "
                             "to this cloud base URL, store-and-forward; the cloud's answers go to <out>.settled.jsonl",
                             audit_default=DEFAULT_AUDIT_RATE)
    parser.add_argument("--frames-dir", type=Path, help="where camera frames are saved (default: <out>.frames/)")
    parser.add_argument("--max-images", type=int, default=0,
                        help="stop after this many new images (0 = run until stopped)")
    parser.add_argument("--duration", type=float, default=0,
                        help="stop after this many seconds (0 = run until stopped)")
    parser.add_argument("--num-threads", type=int, help="TFLite interpreter threads")


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


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class ResultLog:
    """An append-only JSON-lines file; every line is flushed and fsynced before the next image is taken."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.records = []
        if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            with open(path, "a") as handle:  # a line cut by power loss: end it, so the next record starts clean
                handle.write("\n")
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut by power loss: that image was not recorded, so it is classified again
        self._handle = open(path, "a")

    def ids(self) -> set:
        return {r["id"] for r in self.records}

    def append(self, record: dict) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.records.append(record)

    def close(self) -> None:
        self._handle.close()


def top_k(probabilities: np.ndarray, class_names, k: int = TOP_K):
    from cassava.shared.labels import display_name
    from cassava.shared.labels import top_k as ranked

    return [{"class": name, "name": display_name(name), "probability": round(p, 6)}
            for name, p in ranked(probabilities, class_names, k)]


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


def escalation_of(probabilities: np.ndarray, image_id: str, below: float, audit_rate: float,
                  gate_distance: Optional[float] = None, gate_threshold: Optional[float] = None) -> dict:
    """What the record says about escalation: the confidence, `escalate` (hard, audit or None) and who answered
    (a photo the leaf gate turned away is never escalated)."""
    from cassava.shared.escalation import confidence

    policy = EscalationPolicy(escalate_below=below, audit_rate=audit_rate, gate_threshold=gate_threshold)
    decision, = policy.decide(probabilities[None], [image_id], None if gate_distance is None else [gate_distance])
    escalate = decision if decision in (HARD, AUDIT) else None
    return {"confidence": round(float(confidence(probabilities[None])[0]), 6), "escalate": escalate,
            "answered_by": "edge-provisional" if escalate == HARD else "edge"}


class Forwarder:
    """Sends recorded photos to the cloud model, oldest first; what is not yet answered stays in the backlog.
    `escalating`: only the records marked to escalate (hard or audit) go, and the answers to <out>.settled.jsonl."""

    def __init__(self, base_url: str, log: ResultLog, timeout: float = 10.0, escalating: bool = False):
        from cassava.shared.protocol.transport import HttpTransport

        # One try per round: the next round (every --every) is the retry, so the device never stalls on the uplink.
        self.transport = HttpTransport(base_url, timeout=timeout, retries=0)
        self.log, self.escalating = log, escalating
        self.forwarded = ResultLog(log.path.with_suffix(".settled.jsonl" if escalating else ".forwarded.jsonl"))
        self.done = {r["id"] for r in self.forwarded.records}
        self.base_url, self.offline = base_url, False

    def _went(self, offline: bool) -> None:
        """Say so on stderr when the uplink goes down or comes back (once per change, not every round)."""
        if offline != self.offline:
            state = "paused: the cloud does not answer" if offline else "resumed"
            print(f"forwarding to {self.base_url} {state}; {len(self.backlog())} result(s) in the backlog",
                  file=sys.stderr, flush=True)
        self.offline = offline

    def backlog(self):
        return [r for r in self.log.records if r["id"] not in self.done and r.get("path")
                and (r.get("escalate") or not self.escalating)]

    def drain(self) -> int:
        """Forward as much of the backlog as the cloud takes now; stop at the first failure (retry next round)."""
        from cassava.shared.protocol.transport import Rejected, Unavailable
        from cassava.shared.protocol.v2 import build_request, decode_response

        if not self.backlog():
            return 0
        if not self.transport.ready():
            self._went(offline=True)
            return 0
        self._went(offline=False)
        sent = 0
        for record in self.backlog():
            # The original file: the cloud's preprocessing reproduces the edge's pixels from it (the same shared
            # decode and resize), so the cloud judges what the edge judged; camera frames are saved as lossless PNG.
            photo = Path(record["path"]).read_bytes()
            request = build_request("photo", photos=[photo], request_id=record["id"])
            entry = {"id": record["id"], "time": now(), "bytes": len(photo)}
            if self.escalating:
                entry["reason"] = record["escalate"]
            try:
                _, probabilities, labels = decode_response(self.transport.infer(request))
                entry.update(status=200, cloud_prediction=labels[0], edge_prediction=record["top"][0]["class"],
                             cloud_probability=round(float(probabilities[0].max()), 6))
                if self.escalating:
                    entry["agree"] = labels[0] == entry["edge_prediction"]
                    print(json.dumps({"file": record.get("file"), "settled_by": "cloud", "reason": entry["reason"],
                                      "class": labels[0], "edge": entry["edge_prediction"]}), flush=True)
            except Rejected as exc:  # the cloud refused this photo for good: record why rather than retry forever
                entry.update(status=exc.status, error=str(exc)[:300])
            except Unavailable:
                self._went(offline=True)
                return sent  # uplink down or cloud busy: keep the backlog
            self.forwarded.append(entry)
            self.done.add(record["id"])
            sent += 1
        return sent

    def close(self):
        self.transport.close()
        self.forwarded.close()


def leaf_gate_of(model: str):
    """The model folder's leaf gate (edge/gate), or None: watch says `unknown` as the server does."""
    from .gate.gate import has_gate, load_gate

    path = Path(model)
    folder = path if path.is_dir() else path.parent
    return load_gate(folder) if has_gate(folder) else None


def run(args) -> int:
    from cassava.shared.classifier import load_classifier, predict_pixels
    from cassava.shared.preprocess import preprocess, to_model_input

    interval = parse_interval(args.every)
    check_escalation_arguments(args)
    kwargs = {"num_threads": args.num_threads} if args.num_threads else {}
    classifier = load_classifier(args.model, **kwargs)
    spec = classifier.spec
    gate = leaf_gate_of(args.model)
    below = escalation_threshold(args, spec)
    log = ResultLog(args.out)
    done = log.ids()
    uplink = args.forward or args.escalate_to
    forwarder = Forwarder(uplink, log, escalating=bool(args.escalate_to)) if uplink else None
    camera = args.source.startswith("camera:")
    if camera:
        capture, cv2 = open_camera(args.source)
        frames_dir = args.frames_dir or args.out.with_suffix(".frames")
        frames_dir.mkdir(parents=True, exist_ok=True)
        frame_number = sum(1 for r in log.records if r.get("source") == "camera")
    else:
        folder = Path(args.source)
        if not folder.is_dir():
            raise CassavaError(f"--source {args.source}: not a folder (or use camera:0 / camera:video.mp4)")
        seen_sizes: dict = {}
    print(f"watching {args.source} with {spec.title}; results -> {args.out}"
          + (f"; forwarding to {args.forward}" if args.forward else "")
          + (f"; escalating photos below {below:.4g} and {args.audit_rate:.1%} of the rest to {args.escalate_to}"
             if args.escalate_to else ""), file=sys.stderr, flush=True)

    started, new = time.monotonic(), 0

    def classify(image_id: str, source, path: Optional[Path], kind: str):
        nonlocal new
        t0 = time.perf_counter()
        try:
            pixels = preprocess(source, spec.input_size)
        except BadImage as exc:
            record = {"id": image_id, "time": now(), "source": kind, "file": image_id, "error": str(exc)}
        else:
            probabilities = predict_pixels(classifier, pixels[None])[0]
            distance = threshold = None
            if gate is not None:
                distance = float(gate.distances(to_model_input(pixels[None], spec.input_scale), spec.input_scale)[0])
                threshold = gate.threshold
            unknown = bool(EscalationPolicy(gate_threshold=threshold).unknown(
                probabilities[None], spec.class_names, None if distance is None else [distance])[0])
            record = {"id": image_id, "time": now(), "source": kind, "file": image_id,
                      "path": str(path.resolve()) if path else None, "top": top_k(probabilities, spec.class_names),
                      "latency_ms": round((time.perf_counter() - t0) * 1000.0, 2), "model": spec.title,
                      "unknown": unknown}
            if below is not None:
                record.update(escalation_of(probabilities, image_id, below, args.audit_rate, distance, threshold))
        log.append(record)
        done.add(image_id)
        new += 1
        print(json.dumps({k: record.get(k) for k in ("file", "top", "unknown", "latency_ms", "answered_by", "error")
                          if k in record}), flush=True)

    try:
        while True:
            if camera:
                ok, frame = capture.read()
                if not ok and is_live(args.source):  # a live camera does not end: it was unplugged or went offline
                    raise CassavaError(f"--source {args.source}: the camera stopped sending frames after {new} "
                                       f"frame(s) in this run; results so far are in {args.out}")
                if not ok:
                    break  # the video file is finished
                frame_number += 1
                image_id = f"frame-{frame_number:06d}"
                path = frames_dir / f"{image_id}.png"
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                from PIL import Image

                Image.fromarray(rgb).save(path)  # kept so the photo can be forwarded or audited later
                classify(image_id, rgb, path, "camera")
            else:
                for image_id, path in folder_images(folder, done, seen_sizes):
                    classify(image_id, path, path, "folder")
                    if args.max_images and new >= args.max_images:
                        break
            if forwarder:
                forwarder.drain()
            if args.max_images and new >= args.max_images:
                break
            if args.duration and time.monotonic() - started >= args.duration:
                break
            if not camera or is_live(args.source):
                time.sleep(interval)  # a video file is read as fast as it decodes; cameras and folders are paced
    except KeyboardInterrupt:
        pass
    finally:
        if camera:
            capture.release()
        if forwarder:
            forwarder.drain()
            pending = len(forwarder.backlog())
            if pending:
                print(f"{pending} result(s) not yet forwarded: they stay in the backlog for the next run",
                      file=sys.stderr)
            if forwarder.escalating:
                print(settled_summary(forwarder.forwarded.records), file=sys.stderr)
            forwarder.close()
        log.close()
    print(f"{new} new image(s) classified; {len(log.records)} in {args.out}", file=sys.stderr)
    return 0


def check_escalation_arguments(args) -> None:
    if args.forward and args.escalate_to:
        raise CassavaError("--forward sends every photo, --escalate-to only the hard ones: give one of them")
    if not args.escalate_to and (args.escalate_below is not None or args.audit_rate != DEFAULT_AUDIT_RATE):
        raise CassavaError("--escalate-below and --audit-rate need --escalate-to URL")
    if not 0.0 <= args.audit_rate <= 1.0:
        raise CassavaError(f"--audit-rate {args.audit_rate}: a fraction from 0 to 1, e.g. 0.02")
    if args.escalate_below is not None and not 0.0 <= args.escalate_below <= 1.0:
        raise CassavaError(f"--escalate-below {args.escalate_below}: a top probability from 0 to 1, e.g. 0.6")


def escalation_threshold(args, spec) -> Optional[float]:
    if not args.escalate_to:
        return None
    below = args.escalate_below if args.escalate_below is not None else spec.escalate_below
    if below is None:
        raise CassavaError(f"--escalate-to needs a threshold: {args.model} has no escalate_below (convert it again "
                           "with cassava convert, or pass --escalate-below P)")
    return float(below)


def settled_summary(settled) -> str:
    """'3 hard photo(s) settled by the cloud; 2 audited: the edge agreed on 2/2; 1,234 bytes per escalation'."""
    answered = [r for r in settled if r.get("status") == 200]
    hard = [r for r in answered if r.get("reason") == "hard"]
    audits = [r for r in answered if r.get("reason") == "audit"]
    text = f"{len(hard)} hard photo(s) settled by the cloud; {len(audits)} audited"
    if audits:
        text += f": the edge agreed on {sum(r['agree'] for r in audits)}/{len(audits)}"
    if answered:
        text += f"; {sum(r['bytes'] for r in answered) / len(answered):,.0f} bytes per escalation"
    return text
