"""Joint inference: the edge answers the images it is confident about, the cloud settles the hard ones.

After the edge model has answered a batch, the images whose confidence is below the threshold (shared/escalation.py)
go to the cloud tier in one request, as the exact pixels the edge judged: lossless WebP `photos` (the `compact`
wire; or raw UINT8 `pixels`, the `binary` wire), or FP32 `payload` when the request's floats were not 8-bit pixels.
The cloud's probabilities replace the edge's for those images, and the `answered_by` output says per image who
answered: `edge`, `cloud`, or `edge-provisional` (hard, but the cloud did not answer in time).

A dead or slow cloud never fails a request: one short timeout, then a Breaker (the `--auto` failover's) sends no
more escalations until a readiness probe, run in the background every few seconds, finds the cloud again.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Callable, List, Optional

import numpy as np
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, MetadataTensor, ResponseOutput
from prometheus_client import REGISTRY, Counter, Histogram

from cassava.shared.client.routing import Breaker
from cassava.shared.errors import CassavaError
from cassava.shared.escalation import DEFAULT_AUDIT_RATE, is_hard
from cassava.shared.preprocess import to_model_input
from cassava.shared.protocol import ANSWERED_BY, FLOAT_INPUT, PHOTOS_INPUT
from cassava.shared.protocol.images import BadPayload, ImagePayloadCodec
from cassava.shared.protocol.transport import HttpTransport, ModelInfo, Rejected, TransportError, Unavailable
from cassava.shared.protocol.v2 import build_request, decode_response, photos_input
from cassava.shared.spec import ModelSpec

log = logging.getLogger("cassava.escalate")

EDGE, CLOUD, PROVISIONAL = "edge", "cloud", "edge-provisional"
CLOUD_MODEL = "cassava"  # the cloud tier's model name, direct or through the Seldon ingress
# Short, so that a hard image waits at most this long for a cloud that has gone quiet; the breaker then stops asking.
# Loopback escalations of a few 256-px images to the real TF model took well under 1 s here.
DEFAULT_TIMEOUT_S = 2.0
PROBE_INTERVAL_S = 3.0
WIRES = ("compact", "binary")

_METRICS = {}


def _metrics():
    if not _METRICS:  # created at first load, as the runtime's own metrics (MLServer's multi-process mode first)
        _METRICS["answered"] = Counter("cassava_answered_images", "Images answered, by who answered them",
                                       ["model_name", "answered_by"], registry=REGISTRY)
        _METRICS["seconds"] = Histogram("cassava_escalation_seconds", "Time to get the cloud's answer for the hard "
                                        "images of one batch", ["model_name", "outcome"], registry=REGISTRY,
                                        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5))
        # bytes per escalated image = bytes / images, by the form sent: the original photo file, lossless WebP of
        # the pixels, raw pixels (the binary wire) or floats; the images' own bytes, before base64 or framing
        _METRICS["bytes"] = Counter("cassava_escalation_bytes", "Image bytes sent to the cloud, by form",
                                    ["model_name", "form"], registry=REGISTRY)
        _METRICS["sent"] = Counter("cassava_escalation_images", "Images sent to the cloud (escalated or audited), by "
                                   "form", ["model_name", "form"], registry=REGISTRY)
        # audited agreement = agreed="true" / all: confident images also sent to the cloud, edge class == cloud class
        _METRICS["audited"] = Counter("cassava_audited_images", "Confident images re-checked by the cloud, by "
                                      "whether the edge agreed", ["model_name", "agreed"], registry=REGISTRY)
    return _METRICS


@dataclasses.dataclass
class EscalationSettings:
    url: str
    below: float
    timeout_s: float = DEFAULT_TIMEOUT_S
    probe_interval_s: float = PROBE_INTERVAL_S
    wire: str = "compact"
    audit_rate: float = DEFAULT_AUDIT_RATE

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
                       audit_rate=float(extra.get("escalate_audit_rate", DEFAULT_AUDIT_RATE)))
        if not 0.0 <= settings.below <= 1.0:
            raise CassavaError(f"--escalate-below {settings.below:g}: a confidence from 0 to 1")
        if settings.timeout_s <= 0:
            raise CassavaError(f"--escalate-timeout {settings.timeout_s:g}: must be above 0 seconds")
        if not 0.0 <= settings.audit_rate <= 1.0:
            raise CassavaError(f"--audit-rate {settings.audit_rate:g}: a fraction from 0 to 1, e.g. 0.02")
        if settings.wire not in WIRES:
            raise CassavaError(f"escalate_wire {settings.wire!r}: choose from {', '.join(WIRES)}")
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
    transport = HttpTransport(settings.url, CLOUD_MODEL, timeout=settings.timeout_s, retries=0)
    try:
        check_cloud(transport.metadata(), spec, settings.url)
    except Unavailable as exc:
        print(f"warning: --escalate-to {settings.url} does not answer ({exc}); hard images get provisional edge "
              f"answers until it does", file=sys.stderr)
    finally:
        transport.close()
    return extra


def exact_pixels(x: np.ndarray, input_scale: float) -> Optional[np.ndarray]:
    """Model input -> the uint8 pixels it was made from, or None when it was not made from 8-bit pixels (a
    `payload` of arbitrary floats), in which case only the floats themselves are exact."""
    pixels = np.clip(np.rint(x * np.float32(255.0 / input_scale)), 0, 255).astype(np.uint8)
    return pixels if np.array_equal(to_model_input(pixels, input_scale), x) else None


def original_photos(request_input) -> Optional[List[bytes]]:
    """The encoded files of a `photos` request (what the cloud can decode to the edge's very pixels), else None."""
    if request_input.name != PHOTOS_INPUT or request_input.datatype != "BYTES":
        return None
    try:
        return ImagePayloadCodec.decode_input(request_input)
    except BadPayload:
        return None


class Escalation:
    """One per edge model: the cloud's transport, its breaker, and `settle()` for each answered batch."""

    def __init__(self, settings: EscalationSettings, spec: ModelSpec, model_name: str):
        self.settings, self.spec, self.model_name = settings, spec, model_name
        self.transport = HttpTransport(settings.url, CLOUD_MODEL, timeout=settings.timeout_s, retries=0)
        self._checked = False  # the cloud's classes and size, checked once it answers
        self._refused: Optional[str] = None
        self._probing: Optional[asyncio.Future] = None
        self.breaker: Optional[Breaker] = None
        self._auditing: Optional[asyncio.Future] = None
        self._random = np.random.default_rng()

    def start(self) -> None:
        """Blocking (run off the event loop). A cloud that answers with other classes stops the load; one that
        does not answer is a one-line warning, and its images get provisional answers until it does."""
        try:
            self._check()
            up = True
        except Unavailable as exc:
            log.warning("escalation: the cloud at %s does not answer (%s); hard images get provisional edge answers "
                        "until it does (checked every %g s)", self.transport.base_url, exc,
                        self.settings.probe_interval_s)
            up = False
        self.breaker = Breaker(self._probe, self.settings.probe_interval_s, up=up,
                               on_back=lambda: log.warning("escalation: the cloud at %s answers again",
                                                           self.transport.base_url))
        _metrics()

    def rebind(self, settings: EscalationSettings, spec: ModelSpec) -> None:
        """A new model version (store swap): its threshold and spec from now on; the cloud checked against it again
        (blocking: run off the event loop). A cloud that no longer fits stops escalation, loudly."""
        self.settings, self.spec, self._checked = settings, spec, False
        try:
            self._check()
        except Unavailable:
            pass  # checked when a probe finds the cloud again
        except CassavaError as exc:
            self._refused = str(exc)
            log.error("escalation stopped: %s", exc)
        else:
            self._refused = None

    def _check(self) -> None:
        if not self._checked:
            check_cloud(self.transport.metadata(), self.spec, self.transport.base_url)
            self._checked = True

    def _probe(self) -> bool:
        if self._refused or not self.transport.model_ready(timeout=min(1.0, self.settings.timeout_s)):
            return False
        try:
            self._check()
        except Unavailable:
            return False
        except CassavaError as exc:  # the cloud came back with another model: stop asking it, once, loudly
            self._refused = str(exc)
            log.error("escalation stopped: %s", exc)
            return False
        return True

    async def settle(self, x: np.ndarray, probabilities: np.ndarray,
                     originals: Optional[Callable[[], Optional[List[bytes]]]] = None,
                     rejected: Optional[np.ndarray] = None):
        """The edge's answers for a batch -> (the answering tier's probabilities, answered_by per image).
        `originals()`: the request's photo files, when it sent photos (the smaller exact form goes to the cloud);
        called only when something goes, so a confident batch pays nothing for it. `rejected`: photos the leaf gate
        turned away (shared/policy.py `rejected`): the edge answers them `unknown`, never escalated nor audited."""
        rejected = np.zeros(len(probabilities), dtype=bool) if rejected is None else np.asarray(rejected, dtype=bool)
        hard = is_hard(probabilities, self.settings.below) & ~rejected
        answered_by = np.where(hard, PROVISIONAL, EDGE).astype(object)
        files = _Lazy(originals)
        self._audit_some(x, probabilities, ~hard & ~rejected, files)
        if hard.any():
            if self._refused or not self.breaker.up:
                self._probe_later()
            else:
                cloud = await self._ask(x[hard], _subset(await files.get(), hard))
                if cloud is not None:
                    probabilities = probabilities.copy()
                    probabilities[hard] = cloud
                    answered_by[hard] = CLOUD
        counter = _metrics()["answered"]
        for name in (EDGE, CLOUD, PROVISIONAL):
            count = int((answered_by == name).sum())
            if count:
                counter.labels(self.model_name, name).inc(count)
        return probabilities, list(answered_by)

    def _probe_later(self) -> None:
        """While the cloud is down no request waits for it: a probe (when one is due) runs in the background."""
        if self._probing is None or self._probing.done():
            self._probing = asyncio.ensure_future(asyncio.to_thread(self.breaker.available))

    def _audit_some(self, x, probabilities, confident, originals) -> None:
        """Send a fraction `audit_rate` of the confident images to the cloud in the background (the answer does not
        wait for it), one audit at a time and only while the cloud is up, and count whether the edge agreed."""
        chosen = confident & (self._random.random(len(x)) < self.settings.audit_rate)
        if not chosen.any() or not self.breaker.up or (self._auditing is not None and not self._auditing.done()):
            return
        edge_classes = probabilities[chosen].argmax(axis=1)

        async def audit():
            cloud = await self._ask(x[chosen], _subset(await originals.get(), chosen))
            if cloud is not None:
                agreed = int(np.sum(cloud.argmax(axis=1) == edge_classes))
                counter = _metrics()["audited"]
                counter.labels(self.model_name, "true").inc(agreed)
                counter.labels(self.model_name, "false").inc(len(edge_classes) - agreed)

        self._auditing = asyncio.ensure_future(audit())

    async def _ask(self, x: np.ndarray, originals: Optional[List[bytes]] = None) -> Optional[np.ndarray]:
        started = time.monotonic()
        try:  # the transport's own timeout covers each read; wait_for bounds the whole call
            answer = await asyncio.wait_for(asyncio.to_thread(self._infer, x, originals), self.settings.timeout_s)
        except (asyncio.TimeoutError, Unavailable) as exc:
            reason = str(exc) or f"no answer within {self.settings.timeout_s:g} s"
            if self.breaker.failed():
                log.warning("escalation: the cloud at %s failed (%s); provisional edge answers until a probe finds "
                            "it again (every %g s)", self.transport.base_url, reason, self.settings.probe_interval_s)
            answer = None
        except TransportError as exc:  # Rejected: the cloud refused these images; the edge's answer stands
            log.warning("escalation: the cloud refused %d image(s): %s", len(x), exc)
            answer = None
        except Exception as exc:  # a cloud answering nonsense must not fail the edge's request either
            if self.breaker.failed():
                log.warning("escalation: the cloud at %s answered unusably (%s: %s); provisional edge answers until "
                            "a probe finds it again", self.transport.base_url, type(exc).__name__, exc)
            answer = None
        outcome = "answered" if answer is not None else "failed"
        _metrics()["seconds"].labels(self.model_name, outcome).observe(time.monotonic() - started)
        return answer

    def _infer(self, x: np.ndarray, originals: Optional[List[bytes]] = None) -> np.ndarray:
        request, forms = self.request(x, originals)
        response = self.transport.infer(request)
        probabilities = decode_response(response)[1]
        if probabilities.shape != (len(x), self.spec.num_classes):
            raise Rejected(f"the cloud answered {list(probabilities.shape)} for {len(x)} images", 502)
        self.breaker.recovered()
        metrics = _metrics()
        for form, size in forms:
            metrics["bytes"].labels(self.model_name, form).inc(size)
            metrics["sent"].labels(self.model_name, form).inc()
        return probabilities

    def request(self, x: np.ndarray, originals: Optional[List[bytes]] = None):
        """The hard images, exactly as the edge judged them, in one request -> (request, [(form, bytes)] per image).
        Per image the smaller exact form: its original file (the cloud's shared preprocessing decodes it to these
        very pixels) or the pixels as lossless WebP; raw pixels on the binary wire; floats that were not pixels."""
        pixels = exact_pixels(x, self.spec.input_scale)
        if pixels is None:
            floats = np.ascontiguousarray(x)
            return (InferenceRequest(inputs=[NumpyCodec.encode_input(FLOAT_INPUT, floats)]),
                    [("float", floats[0].nbytes)] * len(x))
        if self.settings.wire == "binary":
            return build_request("binary", pixels=pixels), [("pixels", pixels[0].nbytes)] * len(x)
        files, forms = [], []
        for i, image in enumerate(pixels):
            lossless = ImagePayloadCodec.compact(image)
            if originals is not None and len(originals[i]) <= len(lossless):
                files.append(originals[i])
                forms.append(("original", len(originals[i])))
            else:
                files.append(lossless)
                forms.append(("lossless", len(lossless)))
        return InferenceRequest(inputs=[photos_input(files)]), forms

    def close(self) -> None:
        self.transport.close()


class _Lazy:
    """The request's photo files, decoded (off the event loop) the first time something needs them."""

    def __init__(self, make: Optional[Callable[[], Optional[List[bytes]]]]):
        self.make, self.done, self.value = make, make is None, None

    async def get(self) -> Optional[List[bytes]]:
        if not self.done:
            self.value, self.done = await asyncio.to_thread(self.make), True
        return self.value


def _subset(originals: Optional[List[bytes]], mask: np.ndarray) -> Optional[List[bytes]]:
    return None if originals is None else [o for o, keep in zip(originals, mask) if keep]


def answered_by_metadata() -> MetadataTensor:
    return MetadataTensor(name=ANSWERED_BY, datatype="BYTES", shape=[-1])


def answered_by_output(answered_by: List[str]) -> ResponseOutput:
    output: ResponseOutput = StringCodec.encode_output(ANSWERED_BY, answered_by)
    output.shape = [len(answered_by)]
    return output
