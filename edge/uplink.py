"""The edge's one client of the cloud: sends what the outbox holds and keeps what the cloud answers.

A sender thread (independent of any request) sends the outbox's entries, a small window of requests in flight, in
this order: entries a client is waiting for right now, then hard images oldest first, then audits oldest first. A
request carries exact forms of one family: the images clients wait for together (as their request sent them), else
up to `batch_images` and at most `batch_bytes` (the first always goes), so a slow link is never flooded and every
answer settles something. There is no deadline: a failed send opens the
breaker and, while it is open, a readiness probe runs every `probe_interval_s` (from start, too); the next send
after a failure waits a backoff (1, 2, 4 ... 60 s). Only the outbox's budgets end an entry's wait (evicted: its
record says so).

The cloud's answer for a hard image settles it once (settlement.py refuses a second, counted as a duplicate: a
retry after a lost answer). An answer that is not usable (wrong shape, not probabilities, other classes) or a 4xx
for those images keeps the edge's provisional answer, counted by reason, and the entry leaves the outbox.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from cassava.shared.breaker import Breaker
from cassava.shared.errors import CassavaError
from cassava.shared.policy import UNKNOWN, unknown_class_id
from cassava.shared.protocol.transport import HttpTransport, Rejected, Unavailable
from cassava.shared.protocol.v2 import decode_response
from cassava.shared.spec import ModelSpec

from .exact import FAMILY, cloud_request
from .outbox import AUDIT, HARD, Entry, Outbox

log = logging.getLogger("cassava.uplink")

CLOUD_MODEL = "cassava"
PROBE_INTERVAL_S = 3.0
WINDOW = 2
BATCH_IMAGES = 8
LIVE_BATCH_IMAGES = 64  # a request's own limit (max_request_images)
BATCH_BYTES = 64 * 1024  # ~2 s at 256 kbit/s: an answer comes back often, even on 2G
# One send may take this long plus its bytes at 32 kbit/s (half of 2G's worst): 64 KB at 64 kbit/s takes ~8 s of
# its ~36 s, so only a hung cloud or a blackholed link reaches it (then the breaker opens and the probe takes over).
ATTEMPT_TIMEOUT_S = 20.0
SLOWEST_LINK_BYTES_S = 4000.0
MAX_BACKOFF_S = 60.0
EXPIRE_EVERY_S = 10.0
SWEEP_EVERY_S = 600.0  # settlement records past their keeping time

_METRICS: dict = {}


def metrics() -> dict:
    if not _METRICS:  # on first use, after MLServer chose prometheus' mode (as the runtime's own metrics)
        _METRICS["outbox_images"] = Gauge("cassava_outbox_images", "Images waiting in the edge's outbox",
                                          ["model_name"], registry=REGISTRY, multiprocess_mode="livesum")
        _METRICS["outbox_bytes"] = Gauge("cassava_outbox_bytes", "Bytes held by the edge's outbox", ["model_name"],
                                         registry=REGISTRY, multiprocess_mode="livesum")
        _METRICS["settle"] = Histogram("cassava_settle_seconds", "From queued in the outbox to settled by the cloud",
                                       ["model_name"], registry=REGISTRY,
                                       buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600))
        _METRICS["settled"] = Counter("cassava_settled_images", "Outbox images the cloud answered, by kind",
                                      ["model_name", "kind"], registry=REGISTRY)
        _METRICS["evicted"] = Counter("cassava_outbox_evicted_images", "Outbox images evicted unsent (budgets)",
                                      ["model_name", "kind"], registry=REGISTRY)
        _METRICS["duplicate"] = Counter("cassava_duplicate_settlements", "Cloud answers for images already settled "
                                        "(not applied)", ["model_name"], registry=REGISTRY)
        _METRICS["unusable"] = Counter("cassava_unusable_cloud_answers", "Images whose cloud answer was refused or "
                                       "unusable (the edge's answer stands), by reason", ["model_name", "reason"],
                                       registry=REGISTRY)
        _METRICS["bytes"] = Counter("cassava_escalation_bytes", "Image bytes sent to the cloud, by form",
                                    ["model_name", "form"], registry=REGISTRY)
        _METRICS["sent"] = Counter("cassava_escalation_images", "Images sent to the cloud (escalated or audited), by "
                                   "form", ["model_name", "form"], registry=REGISTRY)
        # audited agreement = agreed="true" / all: confident images also sent to the cloud, edge class == cloud class
        _METRICS["audited"] = Counter("cassava_audited_images", "Confident images re-checked by the cloud, by "
                                      "whether the edge agreed", ["model_name", "agreed"], registry=REGISTRY)
    return _METRICS


@dataclasses.dataclass
class UplinkSettings:
    url: str
    probe_interval_s: float = PROBE_INTERVAL_S
    window: int = WINDOW
    batch_images: int = BATCH_IMAGES
    batch_bytes: int = BATCH_BYTES
    attempt_timeout_s: float = ATTEMPT_TIMEOUT_S


class Unusable(Exception):
    """The cloud answered, but not something that can settle these images (the reason is a metric label)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def answer_of(probabilities: np.ndarray, class_names: Sequence[str]) -> dict:
    """Probabilities [C] -> what a record says: prediction (class name), probability, probabilities."""
    top = int(np.argmax(probabilities))
    return {"prediction": class_names[top], "class_id": top, "probability": round(float(probabilities[top]), 6),
            "probabilities": [round(float(p), 6) for p in probabilities]}


class Uplink:
    def __init__(self, settings: UplinkSettings, spec: ModelSpec, outbox: Outbox, book, model_name: str = "cassava",
                 check: Optional[Callable[[], None]] = None, on_back: Callable[[], None] = lambda: None,
                 on_down: Callable[[], None] = lambda: None, on_audit: Callable[[bool], None] = lambda agreed: None):
        """`book`: where settlements go (settlement.StoreBook for the server, journal.JournalBook for watch).
        `check()`: raises CassavaError when the cloud answers in other terms (run once it answers).
        `on_down()` / `on_back()`: the cloud stopped / started answering (once per change; down at start too).
        `on_audit(agreed)`: each audit's verdict, from the uplink's thread (the edge's trust bounds)."""
        self.settings, self.spec, self.outbox, self.book = settings, spec, outbox, book
        self._on_audit = on_audit
        self._on_down, self._said_down = on_down, False
        self.model_name, self._check, self._checked, self.refused = model_name, check, check is None, None
        self.transport = HttpTransport(settings.url, CLOUD_MODEL, timeout=settings.attempt_timeout_s, retries=0)
        self.breaker = Breaker(self._probe, settings.probe_interval_s, up=False, on_back=lambda: self._back(on_back))
        self._lock = threading.Lock()
        self._in_flight: set = set()
        self._audits_in_flight = 0
        self._holding: set = set()  # queued for a client that is about to wait
        self._live: Dict[str, list] = {}  # id -> [(loop, future)] of clients waiting for it now
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._backoff_s, self._not_before = 0.0, 0.0
        self.last_round_trip_s: Optional[float] = None
        self.successes = 0  # sends the cloud answered
        self._pool = concurrent.futures.ThreadPoolExecutor(settings.window, thread_name_prefix="cassava-uplink")
        self._thread: Optional[threading.Thread] = None
        outbox._on_evict = self._evicted
        metrics()
        self._gauges()

    # ------------------------------------------------------------------ life

    def start(self, up: bool = False) -> "Uplink":
        """`up`: the cloud was just checked and answers (else the first probe decides, at once)."""
        if up:
            self._checked = True
            self.breaker.recovered()
        else:
            self.breaker._next_probe = 0.0  # probe at once, then every probe_interval_s while down
        self._thread = threading.Thread(target=self._run, name="cassava-uplink", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.transport.close()

    # ------------------------------------------------------------------ what callers do

    def put(self, payload: bytes, form: str, kind: str, edge: dict, entry_id: Optional[str] = None,
            live: bool = False, meta: Optional[dict] = None) -> Entry:
        """Queue one image's exact form (blocking: fsync). A hard image's settlement record starts as pending.
        `live`: a client will `wait()` for it (it goes first, with its request's other images)."""
        if live:
            with self._lock:
                self._live.setdefault(entry_id, [])
                self._holding.add(entry_id)  # until its client waits: a request's images go together
        entry = self.outbox.put(payload, kind, {"form": form, "edge": edge, "bytes": len(payload), **(meta or {})},
                                entry_id=entry_id)
        self.book.queued(entry)
        self._gauges()
        if not live:
            self._wake.set()  # (a waited-for image goes when its client waits, with its request's others)
        return entry

    async def wait(self, ids: Sequence[str], timeout: float) -> Dict[str, dict]:
        """Wait up to `timeout` seconds for these hard images' settlements. -> {id: final record} for those settled
        in time (possibly none). Waiting makes them the first to go."""
        loop = asyncio.get_running_loop()
        futures = {}
        with self._lock:
            self._holding.difference_update(ids)
            for entry_id in ids:
                future = loop.create_future()
                self._live.setdefault(entry_id, []).append((loop, future))
                futures[entry_id] = future
        self._wake.set()
        try:
            if timeout > 0:
                await asyncio.wait(list(futures.values()), timeout=timeout)
        finally:
            with self._lock:
                for entry_id, future in futures.items():
                    waiting = [w for w in self._live.get(entry_id, []) if w[1] is not future]
                    if waiting:
                        self._live[entry_id] = waiting
                    else:
                        self._live.pop(entry_id, None)
        done = {i: f.result() for i, f in futures.items() if f.done() and not f.cancelled()}
        return {i: record for i, record in done.items() if record.get("status") == "settled"}

    def release(self, ids: Sequence[str]) -> None:
        """Queued with `live` but nobody will wait: they go in the background."""
        with self._lock:
            self._holding.difference_update(ids)
            for entry_id in ids:
                if not self._live.get(entry_id):
                    self._live.pop(entry_id, None)
        self._wake.set()

    @property
    def up(self) -> bool:
        return self.breaker.up and not self.refused

    # ------------------------------------------------------------------ the sender thread

    def _run(self) -> None:
        expired_at = swept_at = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - expired_at > EXPIRE_EVERY_S:
                expired_at = time.monotonic()
                self.outbox.expire()
                self._gauges()
                if time.monotonic() - swept_at > SWEEP_EVERY_S:
                    swept_at = time.monotonic()
                    getattr(self.book, "sweep", lambda: None)()
            if not self.breaker.up:
                self.breaker.available()  # probes when one is due
                if not self.breaker.up:
                    self._down()
                    self._wake.wait(max(0.05, self.breaker._next_probe - time.monotonic()))
                    self._wake.clear()
                    continue
            if time.monotonic() < self._not_before:
                self._wake.wait(self._not_before - time.monotonic())
                self._wake.clear()
                continue
            while True:
                with self._lock:
                    if len(self._in_flight) >= self.settings.window:
                        break
                    batch = self._next_batch()
                    if not batch:
                        break
                    self._in_flight.update(e.id for e in batch)
                    self._audits_in_flight += batch[0].kind == AUDIT
                self._pool.submit(self._send, batch)
            self._wake.wait(1.0)
            self._wake.clear()

    def _next_batch(self) -> List[Entry]:
        """(Under the lock.) Waited-for first, then hard, then audits; each group oldest first; one family."""
        waiting = [e for e in self.outbox.entries() if e.id not in self._in_flight and e.id not in self._holding]
        if self._audits_in_flight:  # one window slot at most for audits: hard images never wait behind them
            waiting = [e for e in waiting if e.kind == HARD]
        if not waiting:
            return []
        waiting.sort(key=lambda e: (e.id not in self._live, e.kind != HARD, e.seq))
        first = waiting[0]
        live = first.id in self._live
        # What clients wait for goes together, as one request would have sent it; the rest in small batches.
        most_images, most_bytes = (LIVE_BATCH_IMAGES, None) if live else (self.settings.batch_images,
                                                                          self.settings.batch_bytes)
        family, batch, size = FAMILY[first.meta.get("form")], [first], first.size
        for entry in waiting[1:]:
            if len(batch) >= most_images or (most_bytes and size + entry.size > most_bytes):
                break
            if FAMILY[entry.meta.get("form")] == family and (entry.id in self._live) == live and \
                    entry.kind == first.kind:
                batch.append(entry)
                size += entry.size
        return batch

    def _send(self, batch: List[Entry]) -> None:
        try:
            self._send_batch(batch)
        except Exception:  # a bug here must not stop the sender: the entries stay queued
            log.exception("uplink: sending %d image(s) failed", len(batch))
        finally:
            with self._lock:
                self._in_flight.difference_update(e.id for e in batch)
                self._audits_in_flight -= batch[0].kind == AUDIT
            self._wake.set()

    def _send_batch(self, batch: List[Entry]) -> None:
        forms, entries = [], []
        for entry in batch:
            if self.book.is_final(entry):  # settled just before a crash: only tidy up
                self.outbox.remove(entry.id)
                continue
            payload = self.outbox.payload(entry)
            if payload is not None:
                forms.append((entry.meta["form"], payload))
                entries.append(entry)
        if not entries:
            return
        started = time.monotonic()
        try:
            size = sum(len(payload) for _, payload in forms)
            response = self.transport.infer(cloud_request(forms, self.spec.input_size, request_id=entries[0].id),
                                            timeout=self.settings.attempt_timeout_s + size / SLOWEST_LINK_BYTES_S)
            probabilities, unknowns = self._usable(response, len(entries))
        except Unavailable as exc:
            self._backoff_s = min(MAX_BACKOFF_S, max(1.0, self._backoff_s * 2))
            self._not_before = time.monotonic() + self._backoff_s
            if self.breaker.failed():
                log.warning("uplink: the cloud at %s failed (%s); %d image(s) wait in the outbox (probing every "
                            "%g s)", self.transport.base_url, exc, len(self.outbox), self.settings.probe_interval_s)
                self._down()
            return
        except (Rejected, Unusable) as exc:  # for good: retrying the same images would get the same
            if len(entries) > 1:  # which image was it? each alone, so the others still settle
                for entry in entries:
                    self._send_batch([entry])
                return
            reason = exc.reason if isinstance(exc, Unusable) else f"http-{exc.status}"
            log.warning("uplink: the cloud's answer for %d image(s) is not used (%s); the edge's answers stand",
                        len(entries), exc)
            for entry in entries:
                metrics()["unusable"].labels(self.model_name, reason).inc()
                why = f"the cloud's answer was unusable: {exc}" if isinstance(exc, Unusable) else str(exc)
                self._finish(entry, self.book.unsettled(entry, why, getattr(exc, "status", None)))
            return
        self.last_round_trip_s = time.monotonic() - started
        self.successes += 1
        self._backoff_s = 0.0
        self.breaker.recovered()
        m = metrics()
        for entry, row, (form, payload), unknown in zip(entries, probabilities, forms, unknowns):
            m["bytes"].labels(self.model_name, form).inc(len(payload))
            m["sent"].labels(self.model_name, form).inc()
            cloud = answer_of(row, self.spec.class_names)
            if unknown:  # the cloud's gate: not a cassava leaf (the probabilities are still its model's)
                cloud.update(prediction=UNKNOWN, class_id=unknown_class_id(self.spec.class_names))
            record = self.book.settled(entry, cloud)
            if record is None:
                m["duplicate"].labels(self.model_name).inc()
            elif entry.kind == AUDIT:
                agreed = cloud["class_id"] == entry.meta["edge"]["class_id"]
                m["audited"].labels(self.model_name, str(agreed).lower()).inc()
                self._on_audit(bool(agreed))
            else:
                m["settled"].labels(self.model_name, entry.kind).inc()
                m["settle"].labels(self.model_name).observe(max(0.0, time.time() - entry.queued))
            self._finish(entry, record)

    def _usable(self, response, n: int) -> Tuple[np.ndarray, List[bool]]:
        """-> (probabilities, whether the cloud answered `unknown`) per image, or Unusable."""
        try:
            class_ids, probabilities, labels = decode_response(response)
        except (ValueError, TypeError, KeyError) as exc:
            raise Unusable("not-v2", str(exc)) from None
        if probabilities.shape != (n, self.spec.num_classes):
            raise Unusable("shape", f"{list(probabilities.shape)} for {n} image(s) of "
                                    f"{self.spec.num_classes} classes")
        if not np.all(np.isfinite(probabilities)) or np.any(probabilities < -1e-3) or \
                not np.allclose(probabilities.sum(axis=1), 1.0, atol=0.02):
            raise Unusable("not-probabilities", "rows that are not probabilities")
        expected = [self.spec.class_names[i] for i in probabilities.argmax(axis=1)]
        # `unknown`: the cloud's leaf gate turned the photo away (shared/policy.py); any other label is another model
        if any(label != want and label != UNKNOWN for label, want in zip(labels, expected)):
            raise Unusable("other-classes", f"labels {labels[:3]} are not this model's classes")
        return probabilities, [label == UNKNOWN for label in labels]

    def _finish(self, entry: Entry, record: Optional[dict]) -> None:
        self.outbox.remove(entry.id)
        self._gauges()
        with self._lock:
            waiting = self._live.pop(entry.id, [])
        for loop, future in waiting:
            if record is not None:
                loop.call_soon_threadsafe(_resolve, future, record)

    def _evicted(self, entry: Entry) -> None:
        metrics()["evicted"].labels(self.model_name, entry.kind).inc()
        record = self.book.unsettled(entry, "evicted from the outbox unsent (over its byte or age budget)")
        with self._lock:
            waiting = self._live.pop(entry.id, [])
        for loop, future in waiting:  # a client waiting for it hears at once, not at the end of its budget
            if record is not None:
                loop.call_soon_threadsafe(_resolve, future, record)

    def _down(self) -> None:
        if not self._said_down:
            self._said_down = True
            self._on_down()

    def _back(self, on_back: Callable[[], None]) -> None:
        if self._said_down:  # (not when the first probe finds it: nobody was told it was down)
            self._said_down = False
            on_back()

    def drain(self, timeout: float) -> bool:
        """Wait (blocking) while the cloud answers and the outbox holds something, at most `timeout` s. -> empty?"""
        self._wake.set()
        deadline = time.monotonic() + timeout
        while len(self.outbox) and time.monotonic() < deadline:
            with self._lock:
                busy = bool(self._in_flight)
            if not (self.breaker.up or busy):
                break
            time.sleep(0.1)
        return not len(self.outbox)

    def _probe(self) -> bool:
        if self.refused or not self.transport.model_ready(timeout=2.0):
            return False
        if not self._checked:
            try:
                self._check()
            except Unavailable:
                return False
            except CassavaError as exc:  # the cloud answers in other terms: stop asking it, once, loudly
                self.refused = str(exc)
                log.error("escalation stopped: %s", exc)
                return False
            self._checked = True
        return True

    def recheck(self) -> None:
        """A new edge model version: the cloud is checked against it again at the next probe or send."""
        self._checked, self.refused = self._check is None, None

    def _gauges(self) -> None:
        m = metrics()
        m["outbox_images"].labels(self.model_name).set(len(self.outbox))
        m["outbox_bytes"].labels(self.model_name).set(self.outbox.bytes)


def _resolve(future: asyncio.Future, record: dict) -> None:
    if not future.done():
        future.set_result(record)
