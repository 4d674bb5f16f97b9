"""`cassava watch`: classify camera frames or new photos in a folder on the edge device, with no server or network.

Each image becomes one JSON line in `--out` (append-only, flushed and fsynced): time, file or frame id, the top-3
classes with probabilities, and the latency. That file is the record of what was done: after a restart, files
already in it are not classified again. With `--forward URL`, each photo and the edge's answer are also sent to the
cloud model (a second opinion from the full model); the cloud's answers go to `<out>.forwarded.jsonl`.

With `--escalate-to URL` instead (joint inference), only the hard photos go (the edge model's top probability
below the threshold: `--escalate-below`, else the model's `escalate_below` from `cassava convert`), plus a fraction
`--audit-rate` of the confident ones to measure how often the edge agrees with the cloud where it was sure. The
choice is made when the photo is classified and written in its record (`escalate`: hard or audit); the cloud's
answers go to `<out>.settled.jsonl`.

Either way the photos travel as `cassava serve edge --escalate-to` sends its hard images: through the edge's outbox
(`<out>.outbox/`, on disk, bounded) and its one cloud client (uplink.py), so a device with intermittent connectivity
loses nothing: what the journal says should go but has no line in the answers file is queued again at start-up,
and the uplink sends it, oldest first, whenever the cloud answers.

The parts: sources.py (folder, camera), journal.py (the records and the answers file), uplink.py + outbox.py (the
cloud), shared/policy.py (the decision); this module is the flags and the loop.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from cassava.shared.arguments import add_escalation_arguments
from cassava.shared.errors import BadImage, CassavaError
from cassava.shared.escalation import DEFAULT_AUDIT_RATE
from cassava.shared.policy import AUDIT, HARD, EscalationPolicy, audited  # noqa: F401 (audited: API)

from .journal import JournalBook, ResultLog, now, settled_summary, top_k  # noqa: F401 (the journal's API)
from .outbox import Outbox
from .sources import CameraFrames, folder_images, is_live, open_camera, parse_interval  # noqa: F401 (API)

DRAIN_AT_END_S = 60.0  # at the end of a run, this long for the cloud to take what waits (the rest stays queued)


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


class Uplinked:
    """The watch's side of the uplink: the answers file, the outbox beside `--out`, and what goes there."""

    def __init__(self, base_url: str, log: ResultLog, spec, escalating: bool):
        from cassava.shared.protocol.transport import check_base_url

        from .uplink import Uplink, UplinkSettings

        self.log, self.escalating, self.spec = log, escalating, spec
        self.base_url = check_base_url(base_url)
        self.answers = ResultLog(log.path.with_suffix(".settled.jsonl" if escalating else ".forwarded.jsonl"))
        self.book = JournalBook(self.answers, escalating)
        self.outbox = Outbox(log.path.with_suffix(".outbox"))
        self.uplink = Uplink(UplinkSettings(self.base_url), spec, self.outbox, self.book, model_name="watch",
                             on_down=lambda: self._say("paused: the cloud does not answer"),
                             on_back=lambda: self._say("resumed"))
        self._queue_backlog()
        self.uplink.start(up=self.uplink.transport.ready(timeout=2.0))

    def _say(self, state: str) -> None:
        print(f"forwarding to {self.base_url} {state}; {len(self.outbox)} result(s) in the backlog",
              file=sys.stderr, flush=True)

    def wanted(self, record: dict) -> Optional[str]:
        """-> the outbox kind for a journal record (None: it does not go)."""
        if not record.get("path"):
            return None
        if self.escalating:
            return record.get("escalate")
        return AUDIT  # forwarded: a second opinion, not a settlement the edge waits for

    def _queue_backlog(self) -> None:
        """At start: entries already answered are tidied up; records that should go and are not queued are."""
        queued = set()
        for entry in self.outbox.entries():
            if self.book.is_final(entry):
                self.outbox.remove(entry.id)
            else:
                queued.add(entry.meta["photo_id"])
        for record in self.log.records:
            if record["id"] not in self.book.done and record["id"] not in queued and self.wanted(record):
                self.send(record)

    def send(self, record: dict) -> None:
        kind = self.wanted(record)
        if not kind:
            return
        try:
            # The original file: the cloud's preprocessing reproduces the edge's pixels from it (the same shared
            # decode and resize), so the cloud judges what the edge judged; camera frames are saved as lossless PNG.
            photo = Path(record["path"]).read_bytes()
        except OSError as exc:
            print(f"cannot send {record['id']} to the cloud: {exc}", file=sys.stderr, flush=True)
            return
        top = record["top"][0]
        edge = {"prediction": top["class"], "probability": top["probability"],
                "class_id": list(self.spec.class_names).index(top["class"])}
        self.uplink.put(photo, "original", kind, edge, meta={"photo_id": record["id"], "file": record.get("file")})

    def close(self) -> None:
        self.uplink.drain(DRAIN_AT_END_S)
        pending = len(self.outbox)
        if pending:
            print(f"{pending} result(s) not yet forwarded: they stay in the backlog for the next run",
                  file=sys.stderr)
        if self.escalating:
            print(settled_summary(self.answers.records), file=sys.stderr)
        self.uplink.close()
        self.outbox.close()
        self.answers.close()


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
    camera = args.source.startswith("camera:")
    if camera:
        frames = CameraFrames(args.source, args.frames_dir or args.out.with_suffix(".frames"),
                              sum(1 for r in log.records if r.get("source") == "camera"))
    else:
        folder = Path(args.source)
        if not folder.is_dir():
            raise CassavaError(f"--source {args.source}: not a folder (or use camera:0 / camera:video.mp4)")
        seen_sizes: dict = {}
    uplink_url = args.forward or args.escalate_to
    uplinked = Uplinked(uplink_url, log, spec, escalating=bool(args.escalate_to)) if uplink_url else None
    print(f"watching {args.source} with {spec.title}; results -> {args.out}"
          + (f"; forwarding to {args.forward}" if args.forward else "")
          + (f"; escalating photos below {below:.4g} and {args.audit_rate:.1%} of the rest to {args.escalate_to}"
             if args.escalate_to else ""), file=sys.stderr, flush=True)

    started, new = time.monotonic(), 0

    def classify(image_id: str, source, path: Optional[Path], kind: str) -> None:
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
        log.append(record)  # the decision first: a crash before the outbox has it is re-queued at start
        done.add(image_id)
        if uplinked:
            uplinked.send(record)
        print(json.dumps({k: record.get(k) for k in ("file", "top", "unknown", "latency_ms", "answered_by", "error")
                          if k in record}), flush=True)

    try:
        while True:
            if camera:
                frame = frames.next(new, args.out)
                if frame is None:
                    break
                image_id, rgb, path = frame
                classify(image_id, rgb, path, "camera")
                new += 1
            else:
                for image_id, path in folder_images(folder, done, seen_sizes):
                    classify(image_id, path, path, "folder")
                    new += 1
                    if args.max_images and new >= args.max_images:
                        break
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
            frames.release()
        if uplinked:
            uplinked.close()
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
