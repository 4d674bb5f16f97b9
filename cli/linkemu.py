"""`cassava.linkemu`: a field uplink emulated on loopback, for demos, tests and benchmarks (not for serving).

A small asyncio TCP proxy with bandwidth, one-way delay, resets and a blackhole. `tc netem` is not available on these
kernels, so the link is emulated in user space, in front of one TCP port:

    link = LinkEmulator(cloud_port, rate_kbit=256, delay_ms=150).start()   # http://127.0.0.1:{link.port}
    link.blackhole(True)   # nothing gets through (held, as TCP would retransmit it), new connections hang
    link.blackhole(False)  # back: what was held is delivered
    link.reset()           # every open connection is reset (RST), as when a modem re-attaches
    link.stop()

Each direction is one shared pipe: bytes are serialised at `rate_kbit` (all connections share it, as on a real
link), then delivered `delay_ms` later (pipelined: delay adds latency, not a per-chunk stall). It runs its own event
loop in a thread, so synchronous code drives it directly. Used by `cassava demo` (cli/demo_field.py),
tests/test_link.py, tests/test_page.py and benchmarks/bench_link.py.
"""
from __future__ import annotations

import asyncio
import socket
import struct
import threading
from typing import Optional

CHUNK = 2048  # small, so bandwidth pacing is smooth on slow links


class _Pipe:
    """One direction of the link: serialisation at `rate` bytes/s, then a fixed delay."""

    def __init__(self, link: "LinkEmulator"):
        self.link = link
        self.free_at = 0.0  # when the link is next free to put a byte on the wire

    async def send_slot(self, size: int) -> float:
        """Wait until `size` bytes have been serialised. -> when they arrive at the other end (loop time)."""
        loop = asyncio.get_running_loop()
        rate = self.link.rate_bytes_s
        now = loop.time()
        if rate:
            self.free_at = max(now, self.free_at) + size / rate
            await asyncio.sleep(self.free_at - now)
            now = loop.time()
        return now + self.link.delay_s


class LinkEmulator:
    def __init__(self, target_port: int, rate_kbit: Optional[float] = None, delay_ms: float = 0.0,
                 target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.set(rate_kbit, delay_ms)
        self.port: Optional[int] = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="linkemu", daemon=True)
        self._open: Optional[asyncio.Event] = None
        self._connections: set = set()
        self._server = None
        self.connections = 0  # accepted in all (a test can see that a client came)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, rate_kbit: Optional[float] = None, delay_ms: float = 0.0) -> "LinkEmulator":
        """Change the link (None: no bandwidth limit); applies to bytes sent from now on."""
        self.rate_bytes_s = rate_kbit * 1000 / 8 if rate_kbit else None
        self.delay_s = delay_ms / 1000.0
        return self

    # ------------------------------------------------------------------ control (any thread)

    def start(self) -> "LinkEmulator":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def blackhole(self, on: bool = True) -> None:
        def switch():
            self._open.clear() if on else self._open.set()
        self._loop.call_soon_threadsafe(switch)

    def reset(self) -> int:
        """Reset every open connection. -> how many."""
        return asyncio.run_coroutine_threadsafe(self._reset(), self._loop).result(10)

    def stop(self) -> None:
        async def close():
            self._server.close()
            await self._reset()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # ------------------------------------------------------------------ the loop's side

    async def _listen(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._up, self._down = _Pipe(self), _Pipe(self)
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, client_reader, client_writer) -> None:
        self.connections += 1
        self._connections.add(client_writer)
        try:
            await self._open.wait()  # a blackholed link: the connection hangs, as a SYN would go unanswered
            try:
                server_reader, server_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self._connections.add(server_writer)
            try:
                await asyncio.gather(self._pipe(client_reader, server_writer, self._up),
                                     self._pipe(server_reader, client_writer, self._down))
            finally:
                self._connections.discard(server_writer)
                _close(server_writer)
        finally:
            self._connections.discard(client_writer)
            _close(client_writer)

    async def _pipe(self, reader, writer, pipe: _Pipe) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def carry():
            while True:
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    await queue.put(None)
                    return
                await self._open.wait()  # blackholed: held here, delivered when the link is back
                await queue.put((await pipe.send_slot(len(data)), data))

        async def deliver():
            loop = asyncio.get_running_loop()
            while True:
                item = await queue.get()
                if item is None:
                    if writer.can_write_eof():
                        try:
                            writer.write_eof()
                        except OSError:
                            pass
                    return
                due, data = item
                await asyncio.sleep(max(0.0, due - loop.time()))
                await self._open.wait()
                try:
                    writer.write(data)
                    await writer.drain()
                except (ConnectionError, OSError):
                    return

        carrier = asyncio.ensure_future(carry())
        try:
            await deliver()
        finally:
            carrier.cancel()

    async def _reset(self) -> int:
        writers = list(self._connections)
        for writer in writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                try:  # linger 0: close() sends RST instead of FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            writer.transport.abort()
        self._connections.clear()
        await asyncio.sleep(0)
        return len(writers)


def _close(writer) -> None:
    try:
        writer.close()
    except (ConnectionError, OSError, RuntimeError):
        pass


def transfer_seconds(size: int, rate_kbit: float, delay_ms: float) -> float:
    """What the link should take to carry `size` bytes one way (for tests of the emulator itself)."""
    return size * 8 / (rate_kbit * 1000) + delay_ms / 1000.0


__all__ = ["LinkEmulator", "transfer_seconds"]
