"""Slow and idle clients cut, connections capped: the REST port's HTTP protocol and the gRPC port's channel options.

uvicorn (MLServer's HTTP server) closes a connection idle between requests after `timeout_keep_alive`, and can answer
503 above `limit_concurrency`, but sets no deadline on a request's headers or body: a client that opens a connection
and sends a header byte every few seconds holds a file descriptor forever (slowloris). `GuardedH11` is uvicorn's own
h11 protocol (the one that runs here: httptools is not installed) with:

  headers   complete within `header_timeout_s` of the connection opening or of the request's first byte, else 408
            and the connection closed;
  body      no silence longer than `body_timeout_s` while it arrives (not counted while the server itself has
            paused reading), else the connection closed;
  count     at most `max_connections` at once, and `connections_per_client` per source address: above either, a new
            connection is closed at once, before it costs a request.

gRPC (`grpc_options`): the HTTP/2 handshake within the header timeout, idle connections closed after a minute,
keepalive pings to find phones that left the network, at most `max_connections` connections and 100 streams each.
"""
from __future__ import annotations

import json
from collections import Counter

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from . import guard

_OPEN: Counter = Counter()  # REST connections open per source address (one server per process)
_SETTINGS = {"guard": guard.GuardSettings()}


def configure(settings: guard.GuardSettings) -> None:
    _SETTINGS["guard"] = settings


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with header and body deadlines and connection caps (the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._limits = _SETTINGS["guard"]
        self._timer = None
        self._phase = None  # "headers" | "body" while a deadline runs
        self._counted = None  # the source address this connection is counted under

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        host = (self.client or ("",))[0]
        limits = self._limits
        per_client = limits.connections_per_client > 0 and host not in limits.exempt_clients
        if len(self.connections) > limits.max_connections:
            return self._refuse("connections")
        if per_client and _OPEN[host] >= limits.connections_per_client:
            return self._refuse("client_connections")
        if per_client:
            _OPEN[host] += 1
            self._counted = host
        self._arm("headers")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            return self._cancel()
        state = self.conn.their_state
        if state is h11.IDLE:  # a request's headers are on their way (or none yet): their deadline runs once
            if self._phase != "headers":
                self._arm("headers")
        elif state is h11.SEND_BODY:
            self._arm("body")  # each chunk restarts the silence allowed
        else:
            self._cancel()  # the request has arrived: the app's time is not limited here

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and self._phase == "headers":
            self._cancel()  # between requests uvicorn's keep-alive timeout applies until the next first byte

    def connection_lost(self, exc) -> None:
        self._cancel()
        if self._counted is not None:
            _OPEN[self._counted] -= 1
            if _OPEN[self._counted] <= 0:
                del _OPEN[self._counted]
            self._counted = None
        super().connection_lost(exc)

    def _refuse(self, reason: str) -> None:
        guard.refused("rest", reason)
        self.transport.close()

    def _arm(self, phase: str) -> None:
        self._cancel()
        seconds = self._limits.header_timeout_s if phase == "headers" else self._limits.body_timeout_s
        self._phase, self._timer = phase, self.loop.call_later(seconds, self._expired)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._phase = None

    def _expired(self) -> None:
        phase, self._timer, self._phase = self._phase, None, None
        if self.transport.is_closing():
            return
        if phase == "body" and self.flow.read_paused:
            return self._arm("body")  # the server stopped reading, not the client
        guard.refused("rest", f"{phase}_timeout")
        if phase == "headers" and (self.cycle is None or self.cycle.response_complete):
            seconds = self._limits.header_timeout_s
            body = json.dumps({"error": f"request headers not received within {seconds:g} s"}).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()


def uvicorn_overrides(settings: guard.GuardSettings) -> dict:
    """uvicorn.Config attributes for the REST port."""
    configure(settings)
    return {"http": GuardedH11, "timeout_keep_alive": settings.keep_alive_s}


def grpc_options(settings: guard.GuardSettings) -> dict:
    """gRPC core channel arguments for the gRPC port, matching the REST limits."""
    return {
        "grpc.server_handshake_timeout_ms": int(settings.header_timeout_s * 1000),
        "grpc.max_connection_idle_ms": 60_000,  # a gRPC client reconnects transparently; a Pi keeps no idle sockets
        "grpc.keepalive_time_ms": 60_000,  # ping an idle peer each minute ...
        "grpc.keepalive_timeout_ms": 20_000,  # ... and drop it if it does not answer (a phone that left the WiFi)
        "grpc.http2.min_ping_interval_without_data_ms": 10_000,  # clients may ping every 10 s, not flood
        "grpc.max_allowed_incoming_connections": settings.max_connections,
        "grpc.max_concurrent_streams": 100,  # HTTP/2's recommended minimum; the per-client share is the limit
    }
