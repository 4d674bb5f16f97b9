"""The edge's one decision per image, in one place: `unknown`, `edge`, `hard` or `audit`.

    unknown  the leaf gate says the photo does not look like a cassava leaf (answered at once; never escalated).
             The label `unknown` has one rule, `is_unknown`: the gate's rejection or the model's own `unknown` class
             (CropNet's 6th) as its top-1; the latter is the model's answer and escalates like any other.
    hard     the edge model's confidence is below `escalate_below`: the cloud should settle it
    audit    a confident photo picked (by a hash of its id) to measure the edge's agreement with the cloud
    edge     the edge answers alone

The server's escalation and `cassava watch` both call `EscalationPolicy.decide`; nothing else decides. The policy is
validated once, when it is made (`EscalationPolicy(...)` raises CassavaError with the flag's name), so a bad setting
is one line wherever it comes from (flags, model-settings `extra`, cassava-model.json).
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import List, Optional, Sequence

import numpy as np

from .errors import CassavaError
from .escalation import DEFAULT_AUDIT_RATE, confidence

UNKNOWN, EDGE, HARD, AUDIT = "unknown", "edge", "hard", "audit"
DECISIONS = (UNKNOWN, EDGE, HARD, AUDIT)


def unknown_class_id(class_names: Sequence[str]) -> int:
    """The class id a V2 answer gives `unknown`: the model's own `unknown` class, else one past its classes (so a
    5-class model's `unknown` is 5, as CropNet's is; metadata's class_names lists it there)."""
    names = list(class_names)
    return names.index(UNKNOWN) if UNKNOWN in names else len(names)


def is_unknown(probabilities: np.ndarray, class_names: Sequence[str], gate_distances: Optional[Sequence[float]] = None,
               gate_threshold: Optional[float] = None) -> np.ndarray:
    """The one rule for `unknown` -> bool [N]: the gate's distance is above its threshold, or the model's own
    `unknown` class is its top-1 (a model and the gate never disagree on what `unknown` means)."""
    probabilities = np.asarray(probabilities)
    rejected = np.zeros(len(probabilities), dtype=bool)
    if UNKNOWN in class_names:
        rejected |= probabilities.argmax(axis=1) == list(class_names).index(UNKNOWN)
    if gate_distances is not None and gate_threshold is not None:
        rejected |= np.asarray(gate_distances, dtype=np.float64).reshape(-1) > gate_threshold
    return rejected


def audited(image_id: str, rate: float) -> bool:
    """Is this confident photo one of the audited fraction? A hash of its id, not a random draw: a photo classified
    again after a power cut gets the same answer, so a backlog re-derived at start-up is the same."""
    return int(hashlib.sha256(image_id.encode()).hexdigest()[:8], 16) / 2 ** 32 < rate


@dataclasses.dataclass(frozen=True)
class EscalationPolicy:
    """escalate_below  top probability below which a photo is hard (0: none is)
    audit_rate      the fraction of confident photos also sent to the cloud
    gate_threshold  leaf-gate distance above which a photo is `unknown` (None: no gate)"""

    escalate_below: float = 0.0
    audit_rate: float = DEFAULT_AUDIT_RATE
    gate_threshold: Optional[float] = None

    def __post_init__(self):
        if not 0.0 <= self.escalate_below <= 1.0:
            raise CassavaError(f"--escalate-below {self.escalate_below}: a confidence from 0 to 1 (the top "
                               "probability), e.g. 0.6")
        if not 0.0 <= self.audit_rate <= 1.0:
            raise CassavaError(f"--audit-rate {self.audit_rate}: a fraction from 0 to 1, e.g. 0.02")
        if self.gate_threshold is not None and not np.isfinite(self.gate_threshold):
            raise CassavaError(f"gate threshold {self.gate_threshold!r}: must be a finite number")

    def with_threshold(self, escalate_below: float) -> "EscalationPolicy":
        """The same policy with another `escalate_below` (e.g. raised while audited agreement is low)."""
        return dataclasses.replace(self, escalate_below=float(escalate_below))

    def unknown(self, probabilities: np.ndarray, class_names: Sequence[str] = (),
                gate_distances: Optional[Sequence[float]] = None) -> np.ndarray:
        """bool [N]: which photos are answered `unknown` (is_unknown with this policy's gate threshold)."""
        return is_unknown(probabilities, class_names, gate_distances, self.gate_threshold)

    def rejected(self, count: int, gate_distances: Optional[Sequence[float]] = None) -> np.ndarray:
        """bool [N]: the photos the gate turned away, the `unknown` decision: answered at once, never escalated nor
        audited. (The model's own `unknown` class is the model's answer: hard or audited like any other, so the
        cloud, which has the same class, may settle it.)"""
        if gate_distances is None or self.gate_threshold is None:
            return np.zeros(count, dtype=bool)
        return np.asarray(gate_distances, dtype=np.float64).reshape(-1) > self.gate_threshold

    def decide(self, probabilities: np.ndarray, image_ids: Sequence[str],
               gate_distances: Optional[Sequence[float]] = None) -> List[str]:
        """float [N, C] probabilities, N ids (and N gate distances when a gate ran) -> N decisions."""
        scores = confidence(np.nan_to_num(np.asarray(probabilities, dtype=np.float64)))
        if len(image_ids) != len(scores):
            raise ValueError(f"{len(scores)} images but {len(image_ids)} ids")
        rejected = self.rejected(len(scores), gate_distances)
        decisions = []
        for score, image_id, is_rejected in zip(scores, image_ids, rejected):
            if is_rejected:
                decisions.append(UNKNOWN)
            elif score < self.escalate_below:
                decisions.append(HARD)
            elif audited(image_id, self.audit_rate):
                decisions.append(AUDIT)
            else:
                decisions.append(EDGE)
        return decisions
