"""Joint inference: the edge answers the images it is confident about, the cloud settles the hard ones.

The edge's policy (shared/policy.py) decides per image: `hard` images go into the outbox (outbox.py, on disk) in
their exact form (exact.py) and the uplink (uplink.py) sends them to the cloud; `audit` images (a fraction of the
confident ones, while the cloud answers) go the same way, to measure agreement. A request waits for its hard images'
settlements at most its wait budget (`parameters.settle_wait_s`, default `--escalate-timeout`, 0 = never wait): what
the cloud answered by then replaces the edge's probabilities (`answered_by`: `cloud`); the others are answered
`edge-provisional` at once and settled later. The response's `settlement_ids` parameter names each image's
settlement (comma-separated, empty for an image the edge answered alone), which
`GET /v2/models/{name}/settlements/{id}` returns (shared/server/settlements.py).

Waiting only pays while the link keeps up: once a wait ran out, requests answer at once until a send to the cloud
takes less than the default budget again, so a hung cloud or a slow link costs a request its budget once, not
every time; while the cloud is down (the breaker open) no request waits.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
from mlserver.codecs import StringCodec
from mlserver.types import MetadataTensor, ResponseOutput
from prometheus_client import REGISTRY, Counter, Histogram

from cassava.shared.errors import CassavaError
from cassava.shared.escalation import DEFAULT_AUDIT_RATE
from cassava.shared.policy import AUDIT, HARD, UNKNOWN, EscalationPolicy
from cassava.shared.protocol import ANSWERED_BY
from cassava.shared.protocol.transport import HttpTransport, ModelInfo, Unavailable
from cassava.shared.protocol.v2 import BadRequest
from cassava.shared.spec import ModelSpec

from .exact import exact_forms, exact_pixels, original_photos  # noqa: F401 (exact_pixels, original_photos: API)
from .outbox import DEFAULT_MAX_AGE_S, DEFAULT_MAX_BYTES, Outbox, new_id
from .settlement import SettlementStore, StoreBook
from .trust import Trust
from .uplink import PROBE_INTERVAL_S, Uplink, UplinkSettings, answer_of

log = logging.getLogger("cassava.escalate")

EDGE, CLOUD, PROVISIONAL = "edge", "cloud", "edge-provisional"
CLOUD_MODEL = "cassava"  # the cloud tier's model name, direct or through the Seldon ingress
# The default wait budget: a hard image waits at most this long for its settlement before it is answered
# provisionally. Loopback escalations of a few 256-px images to the real TF model took well under 1 s here.
DEFAULT_TIMEOUT_S = 2.0
MAX_WAIT_S = 60.0
WAIT_PARAMETER = "settle_wait_s"
SETTLEMENT_IDS = "settlement_ids"
CHECK_TIMEOUT_S = 5.0
WIRES = ("compact", "binary")

_METRICS = {}


def _metrics():
    if not _METRICS:  # created at first load, as the runtime's own metrics (MLServer's multi-process mode first)
        _METRICS["answered"] = Counter("cassava_answered_images", "Images answered, by who answered them",
                                       ["model_name", "answered_by"], registry=REGISTRY)
        _METRICS["seconds"] = Histogram("cassava_escalation_seconds", "Time a request waited for the cloud's answer "
                                        "for its hard images", ["model_name", "outcome"], registry=REGISTRY,
                                        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5))
    return _METRICS


@dataclasses.dataclass
class EscalationSettings:
    url: str
    below: float
    timeout_s: float = DEFAULT_TIMEOUT_S  # the default wait budget
    probe_interval_s: float = PROBE_INTERVAL_S
    wire: str = "compact"
    audit_rate: float = DEFAULT_AUDIT_RATE
    outbox: Optional[str] = None
    outbox_max_bytes: int = DEFAULT_MAX_BYTES
    outbox_max_age_s: float = DEFAULT_MAX_AGE_S

    @property
    def policy(self) -> EscalationPolicy:
        return EscalationPolicy(escalate_below=self.below, audit_rate=self.audit_rate)

    @classmethod
    def from_extra(cls, extra: dict, spec: ModelSpec) -> Optional["EscalationSettings"]:
        """model-settings `parameters.extra` (what `cassava serve edge --escalate-*` writes) -> settings, or None
        when no `escalate_to` is set: then the edge answers everything itself, as without this module."""
        url = extra.get("escalate_to")
        if not url:
            return None
        below = extra.get("escalate_below", spec.escalate_below)
        if below is None:
            raise CassavaError(f"escalating to {url} needs a threshold: the model's cassava-model.json has no "
                               "escalate_below; pass --escalate-below P (a top probability, e.g. 0.6)")
        settings = cls(url=str(url), below=float(below),
                       timeout_s=float(extra.get("escalate_timeout_s") or DEFAULT_TIMEOUT_S),
                       probe_interval_s=float(extra.get("escalate_probe_interval_s") or PROBE_INTERVAL_S),
                       wire=str(extra.get("escalate_wire") or "compact"),
                       audit_rate=float(extra.get("escalate_audit_rate", DEFAULT_AUDIT_RATE)),
                       outbox=extra.get("escalate_outbox"),
                       outbox_max_bytes=int(extra.get("outbox_max_bytes") or DEFAULT_MAX_BYTES),
                       outbox_max_age_s=float(extra.get("outbox_max_age_s") or DEFAULT_MAX_AGE_S))
        settings.policy  # validated once, where the policy is made (one line naming the flag)
        if settings.timeout_s <= 0:
            raise CassavaError(f"--escalate-timeout {settings.timeout_s:g}: must be above 0 seconds")
        if settings.wire not in WIRES:
            raise CassavaError(f"escalate_wire {settings.wire!r}: choose from {', '.join(WIRES)}")
        if settings.outbox_max_bytes <= 0 or settings.outbox_max_age_s <= 0:
            raise CassavaError("outbox budgets (outbox_max_bytes, outbox_max_age_s) must be above 0")
        return settings


def check_cloud(info: ModelInfo, spec: ModelSpec, url: str) -> None:
    """Refuse a cloud that would answer in other terms: another input size or other classes."""
    if info.input_size != spec.input_size:
        raise CassavaError(f"--escalate-to {url}: the cloud model takes {info.input_size}x{info.input_size} images, "
                           f"this edge model {spec.input_size}x{spec.input_size}")
    published = info.parameters.get("class_names")
    classes = tuple(published.split(",")) if isinstance(published, str) else None
    if info.num_classes != spec.num_classes or (classes and classes != tuple(spec.class_names)):
        theirs = ",".join(classes) if classes else f"{info.num_classes} classes"
        raise CassavaError(f"--escalate-to {url}: the cloud model's classes ({theirs}) differ from this edge "
                           f"model's ({','.join(spec.class_names)})")


def preflight(extra: dict, spec: ModelSpec) -> dict:
    """`cassava serve edge --escalate-*`, before MLServer starts: bad settings or a cloud with other classes are one
    line and exit 2; a cloud that does not answer yet is a one-line warning (the edge starts; answers provisional).
    -> the `parameters.extra` entries to write."""
    import sys

    from cassava.shared.protocol.transport import check_base_url

    extra = {**extra, "escalate_to": check_base_url(extra["escalate_to"])}
    settings = EscalationSettings.from_extra(extra, spec)
    transport = HttpTransport(settings.url, CLOUD_MODEL, timeout=CHECK_TIMEOUT_S, retries=0)
    try:
        check_cloud(transport.metadata(), spec, settings.url)
    except Unavailable as exc:
        print(f"warning: --escalate-to {settings.url} does not answer ({exc}); hard images get provisional edge "
              f"answers until it does", file=sys.stderr)
    finally:
        transport.close()
    return extra


def default_outbox(model_name: str) -> Path:
    from cassava.shared.cache import cache_dir

    return cache_dir() / "outbox" / model_name


def wait_budget(parameters, default_s: float) -> float:
    """The request's `settle_wait_s` parameter (seconds; 0 = never wait), else the default; a bad one is a 400."""
    value = getattr(parameters, WAIT_PARAMETER, None) if parameters is not None else None
    if value is None:
        return default_s
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not 0.0 <= seconds <= MAX_WAIT_S:
        raise BadRequest(f"parameter {WAIT_PARAMETER} {value!r}: seconds from 0 to {MAX_WAIT_S:g} (0 = never wait)")
    return seconds


class Escalation:
    """One per edge model: its outbox, settlements and uplink, and `settle()` for each answered batch."""

    def __init__(self, settings: EscalationSettings, spec: ModelSpec, model_name: str):
        self.settings, self.spec, self.model_name = settings, spec, model_name
        self.policy = settings.policy
        folder = Path(settings.outbox) if settings.outbox else default_outbox(model_name)
        self.outbox = Outbox(folder, settings.outbox_max_bytes, settings.outbox_max_age_s)
        self.settlements = SettlementStore(folder / "settlements")
        self.trust = Trust(model_name, settings.below, spec.agreement_bound)  # audited bounds, self-protection
        self.uplink = Uplink(UplinkSettings(settings.url, settings.probe_interval_s), spec, self.outbox,
                             StoreBook(self.settlements), model_name, check=self._check,
                             on_back=lambda: log.warning("escalation: the cloud at %s answers again", settings.url),
                             on_audit=lambda agreed: self.trust.audited([agreed]))
        self._missed_at: Optional[int] = None  # the uplink's success count when a wait last ran out

    @property
    def breaker(self):
        return self.uplink.breaker

    def start(self) -> None:
        """Blocking (run off the event loop). A cloud that answers with other classes stops the load; one that
        does not answer is a one-line warning, and its images get provisional answers until it does."""
        try:
            self._check()
            up = True
        except Unavailable as exc:
            log.warning("escalation: the cloud at %s does not answer (%s); hard images get provisional edge answers "
                        "until it does (checked every %g s)", self.settings.url, exc, self.settings.probe_interval_s)
            up = False
        if len(self.outbox):
            log.info("escalation: %d image(s) in the outbox %s from before; sending them", len(self.outbox),
                     self.outbox.folder)
        _metrics()
        self.uplink.start(up=up)

    def rebind(self, settings: EscalationSettings, spec: ModelSpec) -> None:
        """A new model version (store swap): its threshold and spec from now on; the cloud checked against it again
        (blocking: run off the event loop). A cloud that no longer fits stops escalation, loudly."""
        self.settings, self.spec, self.policy = settings, spec, settings.policy
        self.trust = Trust(self.model_name, settings.below, spec.agreement_bound)  # a new copy earns trust anew
        self.uplink.spec = spec
        self.uplink.recheck()
        try:
            self._check()
        except Unavailable:
            pass  # checked when a probe finds the cloud again
        except CassavaError as exc:
            self.uplink.refused = str(exc)
            log.error("escalation stopped: %s", exc)

    def _check(self) -> None:
        transport = HttpTransport(self.settings.url, CLOUD_MODEL, timeout=CHECK_TIMEOUT_S, retries=0)
        try:
            check_cloud(transport.metadata(), self.spec, self.settings.url)
        finally:
            transport.close()

    def settlement(self, settlement_id: str) -> Optional[dict]:
        """The record for GET .../settlements/{id}; a pending one also says whether the link is up now."""
        record = self.settlements.get(settlement_id)
        if record is not None and record.get("status") == "pending":
            record["link"] = "up" if self.uplink.up else "down"
        return record

    @property
    def keeping_up(self) -> bool:
        """Is waiting worth it? Not after a wait ran out, until a send is quicker than the default budget again."""
        if self._missed_at is None:
            return True
        uplink = self.uplink
        if uplink.successes > self._missed_at and (uplink.last_round_trip_s or 0) < self.settings.timeout_s:
            self._missed_at = None
        return self._missed_at is None

    async def settle(self, x: np.ndarray, probabilities: np.ndarray,
                     originals: Optional[Callable[[], Optional[List[bytes]]]] = None, wait_s: Optional[float] = None,
                     rejected: Optional[np.ndarray] = None):
        """The edge's answers for a batch -> (the answering tier's probabilities, answered_by, settlement ids).
        `originals()`: the request's photo files, when it sent photos (the smaller exact form goes to the cloud);
        called only when something goes, so a confident batch pays nothing for it. `rejected`: photos the leaf gate
        turned away (shared/policy.py `rejected`): the edge answers them `unknown`, never escalated nor audited."""
        ids = [new_id() for _ in range(len(x))]
        rejected = np.zeros(len(x), dtype=bool) if rejected is None else np.asarray(rejected, dtype=bool)
        # the trust threshold learns from leaves only: a rejected photo's low confidence says nothing of the copy
        policy = self.policy.with_threshold(self.trust.threshold(probabilities[~rejected]))  # stored unless protecting
        decisions = np.array(policy.decide(probabilities, ids), dtype=object)
        decisions[rejected] = UNKNOWN
        hard = decisions == HARD
        audit = (decisions == AUDIT) & self.uplink.up  # audits while the cloud answers: they measure, not settle
        answered_by = np.where(hard, PROVISIONAL, EDGE).astype(object)
        settlement_ids = [""] * len(x)
        if (hard.any() or audit.any()) and not self.uplink.refused:
            budget = self.settings.timeout_s if wait_s is None else wait_s
            if not (self.uplink.up and self.keeping_up):
                budget = 0.0
            files = await _Lazy(originals).get() if originals is not None else None
            try:
                await asyncio.to_thread(self._queue, x, probabilities, ids, hard, audit, files, budget > 0)
            except BaseException:
                self.uplink.release(ids)  # what was queued goes in the background
                raise
            hard_ids = [i for i, h in zip(ids, hard) if h]
            for i in np.flatnonzero(hard):
                settlement_ids[i] = ids[i]
            if hard_ids:
                started = time.monotonic()
                settled = await self.uplink.wait(hard_ids, budget)
                if settled:
                    probabilities = probabilities.copy()
                for i in np.flatnonzero(hard):
                    if ids[i] in settled:
                        probabilities[i] = settled[ids[i]]["cloud"]["probabilities"]
                        answered_by[i] = CLOUD
                if len(settled) < len(hard_ids) and budget > 0:
                    self._missed_at = self.uplink.successes
                outcome = "answered" if len(settled) == len(hard_ids) else "failed"
                _metrics()["seconds"].labels(self.model_name, outcome).observe(time.monotonic() - started)
        counter = _metrics()["answered"]
        answered = np.where(rejected, UNKNOWN, answered_by)  # the alert rules' rejection share reads `unknown`
        for name in (EDGE, CLOUD, PROVISIONAL, UNKNOWN):
            count = int((answered == name).sum())
            if count:
                counter.labels(self.model_name, name).inc(count)
        return probabilities, list(answered_by), settlement_ids

    def _queue(self, x, probabilities, ids, hard, audit, files, live: bool) -> None:
        """Blocking (fsync): the hard and audited images' exact forms into the outbox."""
        chosen = np.flatnonzero(hard | audit)
        forms = exact_forms(x[chosen], self.spec.input_scale, self.settings.wire,
                            None if files is None else [files[i] for i in chosen])
        order = sorted(range(len(chosen)), key=lambda k: not hard[chosen[k]])  # hard first: they go first
        for i, (form, payload) in ((chosen[k], forms[k]) for k in order):
            self.uplink.put(payload, form, HARD if hard[i] else AUDIT,
                            answer_of(probabilities[i], self.spec.class_names), ids[i], live=live and hard[i])

    def close(self) -> None:
        self.uplink.close()
        self.outbox.close()


class _Lazy:
    """The request's photo files, decoded (off the event loop) the first time something needs them."""

    def __init__(self, make: Optional[Callable[[], Optional[List[bytes]]]]):
        self.make, self.done, self.value = make, make is None, None

    async def get(self) -> Optional[List[bytes]]:
        if not self.done:
            self.value, self.done = await asyncio.to_thread(self.make), True
        return self.value


def answered_by_metadata() -> MetadataTensor:
    return MetadataTensor(name=ANSWERED_BY, datatype="BYTES", shape=[-1])


def answered_by_output(answered_by: List[str]) -> ResponseOutput:
    output: ResponseOutput = StringCodec.encode_output(ANSWERED_BY, answered_by)
    output.shape = [len(answered_by)]
    return output
