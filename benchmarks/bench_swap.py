"""Hot swap of a model store version on a real edge server under load: how long a new version takes to answer, and
the edge process tree's peak RSS during the swap ÷ its steady RSS (the new version is loaded beside the old one).

4 client threads send one photo per request continuously through every swap; the store is watched every second
(`store_interval_s` 1; the shipped default is 5 s). A swap is timed from the rename of the new version's folder into
place to the first answer naming it: up to one watch interval, then load + verify (timed on its own too, in this
process: `load_verified`, the server's code), then the swap. Versions are copied with their files' times kept, so the
store's 2 s settle time for freshly written files does not apply. RSS (psutil, the mlserver process and its
children) is sampled every 50 ms. Stand-in model (stand-in model, synthetic data): its int8 file is 33 kB, so the
ratio mostly shows what a second classifier, its micro-batcher and its self-check cost beside MLServer itself.

    python benchmarks/bench_swap.py          (BENCH_SWAPS=3 swaps by default)
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import tier_server  # noqa: E402

TARGET_RSS_RATIO = 1.5
TARGET_SWAP_S = 60.0  # the bound: a new version answers within 60 s of its folder appearing
CLIENTS = 4


class Sampler(threading.Thread):
    """The process tree's RSS every 50 ms: (monotonic time, bytes)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        import psutil

        self.process, self.samples, self.done = psutil.Process(pid), [], threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                tree = [self.process, *self.process.children(recursive=True)]
                self.samples.append((time.monotonic(), sum(p.memory_info().rss for p in tree)))
            except Exception:  # a child exiting between listing and reading
                pass
            time.sleep(0.05)

    def between(self, start: float, end: float) -> list:
        return [rss for t, rss in self.samples if start <= t <= end]


class Clients:
    def __init__(self, url: str, photo: bytes):
        from cassava.shared.protocol.transport import HttpTransport
        from cassava.shared.protocol.v2 import build_request

        self.request, self.transport = build_request("photo", photos=[photo]), HttpTransport(url, retries=0)
        self.answers, self.failures, self.stop = [], [], threading.Event()
        self.threads = [threading.Thread(target=self.send, daemon=True) for _ in range(CLIENTS)]

    def send(self):
        while not self.stop.is_set():
            try:
                self.answers.append((time.monotonic(), self.transport.infer(self.request).model_version))
            except Exception as exc:
                self.failures.append(repr(exc))

    def first(self, version: str, since: float, timeout: float = 120.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [t for t, v in list(self.answers) if v == version and t >= since]
            if hits:
                return hits[0]
            time.sleep(0.05)
        raise RuntimeError(f"version {version} did not answer within {timeout:.0f} s")


def load_and_verify_seconds(model: Path, runs: int = 3) -> list:
    from cassava.edge.interpreter import load_tflite_classifier
    from cassava.shared.manifest import load_verified

    times = []
    for _ in range(runs):
        started = time.perf_counter()
        classifier, refusal = load_verified(model, lambda f: load_tflite_classifier(f, pool_size=2))
        times.append(time.perf_counter() - started)
        if refusal:
            raise RuntimeError(f"the converted stand-in is refused: {refusal}")
    return times


def main() -> dict:
    from cassava.cloud.standin import ensure_standin

    swaps = int(os.environ.get("BENCH_SWAPS", "3"))
    work = Path(tempfile.mkdtemp(prefix="bench-swap-"))
    try:
        model = work / "converted"
        result = subprocess.run([sys.executable, "-m", "cassava", "convert", "--model", "standin", "--out", str(model),
                                 "--quantize", "int8", "--quiet"], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"cassava convert failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
        store = work / "store"
        shutil.copytree(model, store / "1")
        photo = next((ensure_standin().parent / "data" / "validation" / "cmd").iterdir()).read_bytes()
        server = tier_server("edge", store, work / "server", extra={"store_interval_s": 1.0})
        with server:
            sampler, clients = Sampler(server.process.pid), Clients(server.url, photo)
            sampler.start()
            for thread in clients.threads:
                thread.start()
            time.sleep(3)  # warm-up
            steady_from = time.monotonic()
            time.sleep(5)
            steady = statistics.median(sampler.between(steady_from, time.monotonic()))
            rows = []
            for version in range(2, 2 + swaps):
                shutil.copytree(model, store / f".{version}.tmp")
                (store / f".{version}.tmp").rename(store / str(version))
                renamed = time.monotonic()
                answered = clients.first(str(version), renamed)
                time.sleep(3)  # the old version drains and is freed
                peak = max(sampler.between(renamed, time.monotonic()))
                rows.append({"version": version, "rename_to_answer_s": answered - renamed, "peak_rss_mb": peak / 2**20})
            clients.stop.set()
            for thread in clients.threads:
                thread.join(60)
            sampler.done.set()
        clients.transport.close()
        verify_s = load_and_verify_seconds(model)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratio = max(r["peak_rss_mb"] for r in rows) / (steady / 2**20)
    median_swap = statistics.median(r["rename_to_answer_s"] for r in rows)
    print(f"edge server, int8 stand-in (stand-in model, synthetic data), model store watched every 1 s, {CLIENTS} "
          f"clients sending continuously; {len(clients.answers)} answers, {len(clients.failures)} failed")
    print(f"steady RSS (process tree, median over 5 s under load): {steady / 2**20:.0f} MB")
    print(f"{'version':>7}  {'rename → answer s':>17}  {'peak RSS MB':>11}  {'÷ steady':>8}")
    for row in rows:
        print(f"{row['version']:>7}  {row['rename_to_answer_s']:>17.2f}  {row['peak_rss_mb']:>11.0f}  "
              f"{row['peak_rss_mb'] / (steady / 2**20):>8.2f}")
    print(f"load + verify of one version (in this process, 3 runs): {', '.join(f'{s:.2f}' for s in verify_s)} s")
    if clients.failures:
        print(f"failures: {clients.failures[:3]}")
    return {
        "steady_rss_mb": steady / 2**20, "swaps": rows, "verify_s": verify_s, "answers": len(clients.answers),
        "failures": len(clients.failures),
        "ratios": [
            {"name": "edge process tree peak RSS during a swap ÷ steady", "value": ratio, "target": TARGET_RSS_RATIO,
             "better": "lower", "unit": "×", "note": f"steady {steady / 2**20:.0f} MB, {swaps} swaps"},
            {"name": "store version rename → first answer from it", "value": median_swap, "target": TARGET_SWAP_S,
             "better": "lower", "unit": " s", "note": "median; includes up to one 1 s watch interval"},
        ],
    }


if __name__ == "__main__":
    main()
