"""Which server answers a request: one tier, or `--auto`: the edge while it is healthy, else the cloud.

A route has `infer(request) -> (response, tier name)` and `metadata()`. The failover route sends each request to
the preferred tier (the edge) while it is healthy; a connection error, timeout or 5xx there marks it unhealthy and
the same request, with the same id, goes to the other tier once. While the edge is unhealthy its readiness
(`/v2/health/ready`, short timeout) is probed every few seconds, and requests go back to it when it answers.
Each request is answered by exactly one tier or fails with both tiers' reasons: never twice, never dropped.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, List

from mlserver.types import InferenceRequest

from ..breaker import Breaker  # noqa: F401 (re-exported: its home was here)
from ..console import say
from ..errors import CassavaError
from ..protocol.transport import ModelInfo, Unavailable


@dataclasses.dataclass
class Endpoint:
    name: str  # "cloud" or "edge": what each result's `tier` says
    transport: object  # HttpTransport or GrpcTransport


class SingleRoute:
    """Every request to one tier (its transport retries on its own)."""

    def __init__(self, tier: Endpoint):
        self.tier = tier
        self.tiers: List[Endpoint] = [tier]
        self.grpc = tier.transport.grpc

    def metadata(self) -> ModelInfo:
        return self.tier.transport.metadata()

    def infer(self, request: InferenceRequest):
        return self.tier.transport.infer(request), self.tier.name

    def describe(self) -> str:
        return f"{self.tier.name} {self.tier.transport.address}"

    def close(self):
        self.tier.transport.close()


class FailoverRoute:
    """Prefer one tier (the edge); fall back to the other (the cloud) while it is down; return when it is back."""

    def __init__(self, preferred: Endpoint, fallback: Endpoint, probe_interval_s: float = 3.0,
                 probe_timeout_s: float = 1.0, say: Callable[[str], None] = say,
                 clock: Callable[[], float] = time.monotonic):
        if preferred.transport.grpc != fallback.transport.grpc:
            raise CassavaError("--auto: both tiers must use the same protocol (REST or gRPC)")
        self.preferred, self.fallback = preferred, fallback
        self.tiers = [preferred, fallback]
        self.grpc = preferred.transport.grpc
        self.probe_interval_s, self.probe_timeout_s = probe_interval_s, probe_timeout_s
        self._say = say
        self._health = Breaker(lambda: preferred.transport.ready(probe_timeout_s), probe_interval_s,
                               on_back=lambda: say(f"{preferred.name} {preferred.transport.address} is back: "
                                                   "using it again"), clock=clock)
        if not self._health.up:
            say(f"{preferred.name} {preferred.transport.address} is not ready: using the {fallback.name} "
                f"{fallback.transport.address} (checking the {preferred.name} every {probe_interval_s:g} s)")

    @property
    def preferred_up(self) -> bool:
        return self._health.up

    def metadata(self) -> ModelInfo:
        """From whichever tier answers first; both tiers serve the same model interface."""
        first, second = self._order()
        try:
            return first.transport.metadata()
        except Unavailable as first_error:
            self._mark_down(first, first_error)
            try:
                return second.transport.metadata()
            except Unavailable as second_error:
                raise Unavailable(f"no tier answers: {first.name}: {first_error}; "
                                  f"{second.name}: {second_error}") from None

    def infer(self, request: InferenceRequest):
        first, second = self._order()
        try:
            return first.transport.infer(request), first.name
        except Unavailable as first_error:
            self._mark_down(first, first_error)
            try:  # the same request (same id) once on the other tier
                response = second.transport.infer(request)
            except Unavailable as second_error:
                raise Unavailable(f"{first.name}: {first_error}; then {second.name}: {second_error}") from None
            if second is self.preferred:
                self._mark_up()
            return response, second.name

    def _order(self):
        """(first tier to try, the other); re-probes the preferred tier when it is down and a probe is due."""
        if self._health.available():
            return self.preferred, self.fallback
        return self.fallback, self.preferred

    def _mark_down(self, tier: Endpoint, error: Exception) -> None:
        if tier is self.preferred and self._health.failed():
            self._say(f"{tier.name} unavailable ({error}): using the {self.fallback.name} "
                      f"{self.fallback.transport.address}")

    def _mark_up(self) -> None:
        self._health.recovered()

    def describe(self) -> str:
        return (f"auto: {self.preferred.name} {self.preferred.transport.address}, "
                f"{self.fallback.name} {self.fallback.transport.address} when it is down")

    def close(self):
        for tier in self.tiers:
            tier.transport.close()
