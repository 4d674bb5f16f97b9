"""Trust on a running edge: audited agreement with its 95 % bounds, exported as metrics, and self-protection.

Audits are confident photos also sent to the cloud (escalate.py), so their agreement is agreement "on the photos the
edge keeps", the quantity `cassava convert` bounded (spec `agreement_bound`, the target here). Over the last
`window` audits this module keeps the one-sided Clopper–Pearson bounds (shared/bounds.py):

    lower  with 95 % confidence agreement is >= lower: the guarantee, which tightens as audits accumulate
    upper  with 95 % confidence agreement is <= upper: below the target means the promise is broken

Self-protection acts on evidence of a drop, the upper bound, not on the lower one: a new node with 20 clean audits
has a lower bound of 86 %, below any useful target, and would escalate for months for lack of evidence, not because
anything went wrong. The rule (one place, documented in docs/monitoring.md):

    once `min_audits` audits are in the window and upper < target: protect. escalate_below rises one step: the
    threshold that sends `step` more of recent photos (a quantile of the last photos' confidences), re-judged after
    another `min_audits // 2` audits, and never beyond the threshold sending `max_share` of photos.
    when upper >= target again (the bad audits have left the window, or the drift was confined to photos the
    raised threshold now sends): back to the stored threshold at once.

Entering and leaving protection is logged once each; `cassava_trust_protecting` and `cassava_escalate_below` say it
in metrics. The threshold itself is applied by the policy (shared/policy.py `with_threshold`); this module only
says which one.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Optional, Sequence

import numpy as np
from prometheus_client import REGISTRY, Counter, Gauge

from cassava.shared.bounds import CONFIDENCE, lower_bound, upper_bound
from cassava.shared.escalation import confidence

log = logging.getLogger("cassava.trust")

# The target when the model's spec stores no `agreement_bound`: convert's refusal floor (edge/convert/options.py).
DEFAULT_TARGET = 0.95
WINDOW = 500  # audits: at 2 % of 100 photos a day, about 8 months; at 1000 photos an hour, a day
MIN_AUDITS = 20  # fewer say little: 20 clean audits only prove >= 86 %
STEP = 0.05  # each step sends 5 % more of recent photos
MAX_SHARE = 0.30  # never send more than this share of photos because of protection
RECENT = 1000  # photos' confidences kept to turn a share into a threshold

_METRICS = {}


def metrics():
    """Created on first use (MLServer sets prometheus' multi-process mode first); gauges per worker process."""
    if not _METRICS:
        def gauge(name, text, labels=("model_name",)):
            return Gauge(name, text, list(labels), multiprocess_mode="liveall", registry=REGISTRY)
        _METRICS["bound"] = gauge("cassava_audited_agreement_bound", "One-sided 95% Clopper-Pearson bound on "
                                  "audited agreement over the last audits (lower: the guarantee; upper: below the "
                                  "target means a drop)", ("model_name", "bound"))
        _METRICS["audits"] = gauge("cassava_audited_window_audits", "Audits in the window the bounds are over")
        _METRICS["target"] = gauge("cassava_audited_agreement_target", "The agreement the edge checks audits "
                                   "against (the converted copy's stored bound)")
        _METRICS["below"] = gauge("cassava_escalate_below", "The escalation threshold in force (raised while "
                                  "protecting)")
        _METRICS["protecting"] = gauge("cassava_trust_protecting", "1 while audited agreement is, with 95% "
                                       "confidence, below the target and the edge escalates more")
        _METRICS["protections"] = Counter("cassava_trust_protections", "Times the edge started protecting itself",
                                          ["model_name"], registry=REGISTRY)
    return _METRICS


class Trust:
    """One per edge model version: `threshold()` before each batch's decision, `audited()` with each audit."""

    def __init__(self, model_name: str, stored_below: float, target: Optional[float] = None,
                 window: int = WINDOW, min_audits: int = MIN_AUDITS, step: float = STEP, max_share: float = MAX_SHARE):
        self.model_name, self.stored_below = model_name, float(stored_below)
        self.target = DEFAULT_TARGET if target is None else float(target)
        self.min_audits, self.step, self.max_share = int(min_audits), float(step), float(max_share)
        self.audits = collections.deque(maxlen=int(window))  # True: the edge agreed with the cloud
        self.recent = collections.deque(maxlen=RECENT)  # confidences of recent photos
        self.level = 0  # protection steps taken; 0: the stored threshold
        self.below = self.stored_below
        self._since_step = 0
        # threshold() runs on the event loop, audited() on the uplink's thread: both read `recent`
        self._lock = threading.Lock()
        m = metrics()
        m["target"].labels(model_name).set(self.target)
        m["protecting"].labels(model_name).set(0)
        self._publish()

    def threshold(self, probabilities: np.ndarray) -> float:
        """The threshold for this batch (the stored one unless protecting); remembers the batch's confidences."""
        scores = confidence(np.nan_to_num(np.asarray(probabilities, dtype=np.float64)))
        with self._lock:
            self.recent.extend(scores.tolist())
            return self.below

    def audited(self, agreed: Sequence[bool]) -> None:
        """The cloud's verdict on audited photos: update the bounds, then step protection up, or end it."""
        with self._lock:
            self._audited(agreed)

    def _audited(self, agreed: Sequence[bool]) -> None:
        self.audits.extend(bool(a) for a in agreed)
        self._since_step += len(agreed)
        lower, upper, n = self.bounds()
        k = int(sum(self.audits))
        if n >= self.min_audits and upper < self.target:
            if self.level == 0 or self._since_step >= max(1, self.min_audits // 2):
                self._step_up(k, n, upper)
        elif self.level:
            log.warning("trust: audited agreement %d/%d is no longer below %.1f%% with 95%% confidence (upper bound "
                        "%.1f%%); escalating below the stored %.4g again", k, n, 100 * self.target, 100 * upper,
                        self.stored_below)
            self.level, self.below = 0, self.stored_below
            metrics()["protecting"].labels(self.model_name).set(0)
        self._publish((lower, upper, n))

    def _step_up(self, k: int, n: int, upper: float) -> None:
        raised = self._raised(self.level + 1)
        if raised <= self.below and self.level:
            return  # at the cap: nothing more to send
        if self.level == 0:
            metrics()["protections"].labels(self.model_name).inc()
            metrics()["protecting"].labels(self.model_name).set(1)
            log.warning("trust: audited agreement %d/%d is below %.1f%% with 95%% confidence (upper bound %.1f%%): "
                        "escalating more (threshold %.4g -> %.4g, at most %.0f%% of photos) until it recovers",
                        k, n, 100 * self.target, 100 * upper, self.stored_below, raised, 100 * self.max_share)
        self.level += 1
        self.below = raised
        self._since_step = 0

    def _raised(self, level: int) -> float:
        """The threshold sending `level` steps more of recent photos than the stored one, capped at `max_share`."""
        scores = np.asarray(self.recent, dtype=np.float64)
        if not scores.size:
            return self.stored_below
        stored_share = float((scores < self.stored_below).mean())
        share = min(self.max_share, stored_share + level * self.step)
        if share <= stored_share:
            return self.stored_below
        return max(self.stored_below, float(np.quantile(scores, share)))

    def bounds(self) -> tuple:
        n, k = len(self.audits), int(sum(self.audits))
        return lower_bound(k, n, CONFIDENCE), upper_bound(k, n, CONFIDENCE), n

    def _publish(self, bounds: Optional[tuple] = None) -> None:
        """The gauges; `bounds`: (lower, upper, n) when just computed (each takes ~1 ms at 500 audits)."""
        lower, upper, n = bounds or self.bounds()
        m = metrics()
        m["bound"].labels(self.model_name, "lower").set(lower)
        m["bound"].labels(self.model_name, "upper").set(upper)
        m["audits"].labels(self.model_name).set(n)
        m["below"].labels(self.model_name).set(self.below)
