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

import dataclasses
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


@dataclasses.dataclass
class WatchOptions:
    """What `cassava watch` is asked to do: the command's flags, by the same names."""
    model: str
    source: str
    every: str = "2s"
    out: Path = Path("results.jsonl")
    forward: Optional[str] = None
    escalate_to: Optional[str] = None
    escalate_below: Optional[float] = None
    audit_rate: float = DEFAULT_AUDIT_RATE
    frames_dir: Optional[Path] = None
    max_images: int = 0
    duration: float = 0
    num_threads: Optional[int] = None

    @classmethod
    def from_args(cls, args) -> "WatchOptions":
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def escalation_of(probabilities: np.ndarray, image_id: str, policy: EscalationPolicy,
                  gate_distance: Optional[float] = None) -> dict:
    """What the record says about escalation: the confidence, `escalate` (hard, audit or None) and who answered
    (a photo the leaf gate turned away is never escalated)."""
    from cassava.shared.escalation import confidence

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
    return watch(WatchOptions.from_args(args))


def watch(options: WatchOptions) -> int:
    from cassava.shared.classifier import load_classifier, predict_pixels
    from cassava.shared.preprocess import preprocess, to_model_input

    interval = parse_interval(options.every)
    check_escalation_arguments(options)
    kwargs = {"num_threads": options.num_threads} if options.num_threads else {}
    classifier = load_classifier(options.model, **kwargs)
    spec = classifier.spec
    gate = leaf_gate_of(options.model)
    below = escalation_threshold(options, spec)
    # the one decision per photo (unknown / hard / audit / edge), validated once here
    policy = EscalationPolicy(escalate_below=below or 0.0, audit_rate=options.audit_rate,
                              gate_threshold=gate.threshold if gate is not None else None)
    log = ResultLog(options.out)
    done = log.ids()
    camera = options.source.startswith("camera:")
    if camera:
        frames = CameraFrames(options.source, options.frames_dir or options.out.with_suffix(".frames"),
                              sum(1 for r in log.records if r.get("source") == "camera"))
    else:
        folder = Path(options.source)
        if not folder.is_dir():
            raise CassavaError(f"--source {options.source}: not a folder (or use camera:0 / camera:video.mp4)")
        seen_sizes: dict = {}
    uplink_url = options.forward or options.escalate_to
    uplinked = Uplinked(uplink_url, log, spec, escalating=bool(options.escalate_to)) if uplink_url else None
    print(f"watching {options.source} with {spec.title}; results -> {options.out}"
          + (f"; forwarding to {options.forward}" if options.forward else "")
          + (f"; escalating photos below {below:.4g} and {options.audit_rate:.1%} of the rest to {options.escalate_to}"
             if options.escalate_to else ""), file=sys.stderr, flush=True)

    started, new = time.monotonic(), 0

    def classify(image_id: str, source, path: Optional[Path], kind: str) -> None:
        t0 = time.perf_counter()
        try:
            pixels = preprocess(source, spec.input_size)
        except BadImage as exc:
            record = {"id": image_id, "time": now(), "source": kind, "file": image_id, "error": str(exc)}
        else:
            probabilities = predict_pixels(classifier, pixels[None])[0]
            distance = None
            if gate is not None:
                distance = float(gate.distances(to_model_input(pixels[None], spec.input_scale), spec.input_scale)[0])
            unknown = bool(policy.unknown(probabilities[None], spec.class_names,
                                          None if distance is None else [distance])[0])
            record = {"id": image_id, "time": now(), "source": kind, "file": image_id,
                      "path": str(path.resolve()) if path else None, "top": top_k(probabilities, spec.class_names),
                      "latency_ms": round((time.perf_counter() - t0) * 1000.0, 2), "model": spec.title,
                      "unknown": unknown}
            if below is not None:
                record.update(escalation_of(probabilities, image_id, policy, distance))
        log.append(record)  # the decision first: a crash before the outbox has it is re-queued at start
        done.add(image_id)
        if uplinked:
            uplinked.send(record)
        print(json.dumps({k: record.get(k) for k in ("file", "top", "unknown", "latency_ms", "answered_by", "error")
                          if k in record}), flush=True)

    try:
        while True:
            if camera:
                frame = frames.next(new, options.out)
                if frame is None:
                    break
                image_id, rgb, path = frame
                classify(image_id, rgb, path, "camera")
                new += 1
            else:
                for image_id, path in folder_images(folder, done, seen_sizes):
                    classify(image_id, path, path, "folder")
                    new += 1
                    if options.max_images and new >= options.max_images:
                        break
            if options.max_images and new >= options.max_images:
                break
            if options.duration and time.monotonic() - started >= options.duration:
                break
            if not camera or is_live(options.source):
                time.sleep(interval)  # a video file is read as fast as it decodes; cameras and folders are paced
    except KeyboardInterrupt:
        pass
    finally:
        if camera:
            frames.release()
        if uplinked:
            uplinked.close()
        log.close()
    print(f"{new} new image(s) classified; {len(log.records)} in {options.out}", file=sys.stderr)
    return 0


def check_escalation_arguments(options: WatchOptions) -> None:
    """The flags' combinations; their values are EscalationPolicy's to check."""
    if options.forward and options.escalate_to:
        raise CassavaError("--forward sends every photo, --escalate-to only the hard ones: give one of them")
    if not options.escalate_to and (options.escalate_below is not None or options.audit_rate != DEFAULT_AUDIT_RATE):
        raise CassavaError("--escalate-below and --audit-rate need --escalate-to URL")
    EscalationPolicy(escalate_below=options.escalate_below or 0.0, audit_rate=options.audit_rate)  # before loading


def escalation_threshold(options: WatchOptions, spec) -> Optional[float]:
    if not options.escalate_to:
        return None
    below = options.escalate_below if options.escalate_below is not None else spec.escalate_below
    if below is None:
        raise CassavaError(f"--escalate-to needs a threshold: {options.model} has no escalate_below (convert it "
                           "again with cassava convert, or pass --escalate-below P)")
    return float(below)
