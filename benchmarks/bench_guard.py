"""The guard's latency targets (issue 33), on a real edge server (shipped settings, the int8 stand-in), over loopback.

  slow headers   normal clients' p95 with 400 connections sending their headers slowly (8 source addresses x 50,
                 under the per-client cap) vs. alone; how many of the 400 the server closed within header timeout + 3 s
  greedy client  four normal clients (one request at a time each) alone, then beside one greedy client in its own
                 process (20 requests in flight, 10x the 2 `cassava predict` keeps by default), in turns: the normal
                 clients' p95 ratio and failures, the greedy client's statuses

Every client is its own loopback source address (127.0.0.2, ...). Photos: ../shared/data/cassava-real when present,
else two synthetic JPEGs. Timings on a shared machine are only meaningful as ratios within one run.

    python benchmarks/bench_guard.py [--seconds 15] [--requests-per-client N] [--queued-per-client N]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import REAL_PHOTOS, REPO, standin_tflite, tier_server  # noqa: E402

from cassava.shared.server.guard import GuardSettings  # noqa: E402


def _photo() -> bytes:
    files = sorted(REAL_PHOTOS.rglob("*.jpg")) if REAL_PHOTOS.exists() else []
    if files:
        return files[0].read_bytes()
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (600, 400), (40, 120, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


ROUNDS = 3
JSON = {"content-type": "application/json"}


def _body(photo: bytes) -> bytes:
    """The request as bytes, encoded once: the clients' own JSON work stays out of the measurement."""
    tensor = {"name": "photos", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(photo).decode()],
              "parameters": {"content_type": "base64"}}
    return json.dumps({"inputs": [tensor]}).encode()


async def _client(url: str, body: bytes, source: str, until: float, latencies: list, statuses: list, pause: float):
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=source), timeout=60) as client:
        while time.monotonic() < until:
            start = time.monotonic()
            reply = await client.post(url, content=body, headers=JSON)
            statuses.append(reply.status_code)
            if reply.status_code == 200:
                latencies.append(time.monotonic() - start)
            await asyncio.sleep(pause)


async def _normals(url, body, seconds, extra=()):
    latencies, statuses = [], []
    until = time.monotonic() + seconds
    await asyncio.gather(*[_client(url, body, f"127.0.0.{31 + i}", until, latencies, statuses, 0.05) for i in range(4)],
                         *[job(until) for job in extra])
    return latencies, statuses


async def _slow(port: int, source: str, closed: list, limit: float):
    opened = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(b"POST /v2/models/cassava/infer HTTP/1.1\r\nHost: pi\r\n")
    try:
        while time.monotonic() - opened < limit + 10:
            try:
                data = await asyncio.wait_for(reader.read(4096), timeout=2)
            except asyncio.TimeoutError:
                writer.write(b"X-Slow: y\r\n")
                continue
            if not data or data.startswith(b"HTTP/1.1 408"):
                closed.append(time.monotonic() - opened)
                return
    except OSError:
        closed.append(time.monotonic() - opened)
    finally:
        writer.close()


def p95(values) -> float:
    return float(np.percentile(values, 95)) if values else float("nan")


async def measure(server, seconds: float) -> None:
    url = f"{server.url}/v2/models/cassava/infer"
    body = _body(_photo())
    limits = GuardSettings.from_args(json.loads((REPO / "edge" / "settings.json").read_text())
                                     ["model_repository_implementation_args"])
    await _normals(url, body, 3)  # warm-up
    alone, alone_statuses = await _normals(url, body, seconds)
    print(f"normal clients alone: {len(alone)} answers, p95 {p95(alone) * 1000:.0f} ms, "
          f"failures {sum(s != 200 for s in alone_statuses)}")

    closed = []

    async def slow_job(until):
        await asyncio.gather(*[_slow(server.http_port, f"127.0.0.{2 + i // 50}", closed, limits.header_timeout_s)
                               for i in range(400)])

    beside, beside_statuses = await _normals(url, body, limits.header_timeout_s, [slow_job])
    in_time = sum(t <= limits.header_timeout_s + 3 for t in closed)
    print(f"beside 400 slow-header connections: p95 {p95(beside) * 1000:.0f} ms ({p95(beside) / p95(alone):.2f}x "
          f"alone), failures {sum(s != 200 for s in beside_statuses)}; slow connections closed within "
          f"{limits.header_timeout_s:g}+3 s: {in_time}/400")

    # alone and beside the greedy client in turns, so that other load on a shared machine falls on both alike
    alone2, greedy, greedy_normal, greedy_statuses = [], [], [], []
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # the greedy client's own CPU work in its own process
        for _ in range(ROUNDS):
            alone2 += (await _normals(url, body, seconds / ROUNDS))[0]
            pending = pool.apply_async(_greedy, (url, body, seconds / ROUNDS))
            await asyncio.sleep(0.5)
            latencies, statuses = await _normals(url, body, seconds / ROUNDS)
            greedy += latencies
            greedy_normal += statuses
            greedy_statuses += pending.get(120)
    counts = {s: greedy_statuses.count(s) for s in sorted(set(greedy_statuses))}
    print(f"normal clients alone (again, {ROUNDS} turns): {len(alone2)} answers, p95 {p95(alone2) * 1000:.0f} ms; "
          f"beside a greedy client (20 in flight, its own process): {len(greedy)} answers, p95 "
          f"{p95(greedy) * 1000:.0f} ms ({p95(greedy) / p95(alone2):.2f}x), failures "
          f"{sum(s != 200 for s in greedy_normal)}; greedy client's statuses {counts}")


def _greedy(url: str, body: bytes, seconds: float) -> list:
    statuses = []

    async def run():
        until = time.monotonic() + seconds + 0.5
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.30", limits=httpx.Limits(max_connections=40))
        async with httpx.AsyncClient(transport=transport, timeout=60) as client:
            async def loop():
                while time.monotonic() < until:
                    statuses.append((await client.post(url, content=body, headers=JSON)).status_code)
            await asyncio.gather(*[loop() for _ in range(20)])

    asyncio.run(run())
    return statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measured phase")
    parser.add_argument("--requests-per-client", type=int, help="the server's per-client share (default: the edge's)")
    parser.add_argument("--queued-per-client", type=int, help="requests waiting their turn (default: the edge's)")
    args = parser.parse_args()
    if args.requests_per_client is not None:
        os.environ["CASSAVA_REQUESTS_PER_CLIENT"] = str(args.requests_per_client)  # the server inherits it
    if args.queued_per_client is not None:
        os.environ["CASSAVA_QUEUED_PER_CLIENT"] = str(args.queued_per_client)
    server = tier_server("edge", standin_tflite("int8")).start(timeout=180)
    try:
        asyncio.run(measure(server, args.seconds))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
