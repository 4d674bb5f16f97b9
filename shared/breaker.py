"""A server's health as its callers see it (`Breaker`): used by the client's `--auto` failover and by the edge's
uplink to the cloud, so it lives beside both tiers' clients rather than inside the client package."""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional


class Breaker:
    """A server's health as its callers see it: up until a call fails; then down, and `probe()` (a short readiness
    check) runs at most every `probe_interval_s`, by one caller while the others carry on without the server; up
    again when the probe or a call succeeds (`on_back()` then runs once). Used by `--auto` failover and by the edge's
    escalation to the cloud."""

    def __init__(self, probe: Callable[[], bool], probe_interval_s: float = 3.0, up: Optional[bool] = None,
                 on_back: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.monotonic):
        self._probe, self._on_back = probe, on_back
        self._clock = clock  # the clock the probes are timed by (tests bring their own)
        self.probe_interval_s = probe_interval_s
        self._lock = threading.Lock()
        self._up = probe() if up is None else up
        self._next_probe = clock() + probe_interval_s

    @property
    def up(self) -> bool:
        return self._up

    def available(self) -> bool:
        """Up, or down with a probe due that answers now (this caller probes; the probe's result is recorded)."""
        probe = False
        with self._lock:
            if not self._up and self._clock() >= self._next_probe:
                self._next_probe = self._clock() + self.probe_interval_s
                probe = True
        if probe and self._probe():
            self.recovered()
        return self._up

    def failed(self) -> bool:
        """A call failed: down, next probe in `probe_interval_s`. -> True if it was up (say so once)."""
        with self._lock:
            was_up, self._up = self._up, False
            self._next_probe = self._clock() + self.probe_interval_s
        return was_up

    def recovered(self) -> bool:
        """A probe or call succeeded: up. -> True if it was down (and `on_back()` ran)."""
        with self._lock:
            was_down, self._up = not self._up, True
        if was_down:
            self._on_back()
        return was_down
