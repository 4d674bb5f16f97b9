"""End-to-end images/s through one cloud server: this client's default vs the tutorial's float32 JSON requests.

Same server (the stand-in behind `cassava serve cloud`), same photos, same run, same preprocessing code; only the
client differs. "End to end" = read the photo, preprocess, encode, send, wait, decode the answer.
  tutorial  the CropNet/MLServer tutorial's app.py: NumpyCodec float32 `payload`, batches of 9, JSON via
            `json=request.dict()`, one request at a time
  client    `cassava predict --local` defaults: `compact` wire (preprocessed pixels as lossless WebP), batches
            of 16, 2 requests in flight
Photos: the 27 real photos in ../shared/data/cassava-real cycled to 256 when present, else the stand-in's synthetic
photos (the table says which). Run: `python benchmarks/bench_client.py` (prints a table, returns a dict).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL_PHOTOS = REPO.parent / "shared" / "data" / "cassava-real"
IMAGES = 256
TUTORIAL_BATCH = 9


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def photos(count: int = IMAGES):
    """(samples, what they are): real photos cycled to `count`, else the stand-in's synthetic photos."""
    from cassava.shared.data import load_samples

    if REAL_PHOTOS.is_dir():
        base, what = load_samples(str(REAL_PHOTOS)), f"{{n}} real photos from {REAL_PHOTOS} cycled to {count}"
    else:
        base, what = load_samples("standin"), "{n} stand-in synthetic photos (stand-in model, synthetic data) cycled to " + str(count)
    return [base[i % len(base)] for i in range(count)], what.format(n=len(base))


class CloudServer:
    """`cassava serve cloud --model standin` on free loopback ports, for the length of a `with` block."""

    def __enter__(self):
        from cassava.cloud.standin import ensure_standin

        ensure_standin()
        self.http, grpc, metrics = _free_port(), _free_port(), _free_port()
        self.url, self.grpc_address = f"http://127.0.0.1:{self.http}", f"127.0.0.1:{grpc}"
        self.run_dir = tempfile.mkdtemp(prefix="bench-client-")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "cassava"), "serve", "cloud", "--model", "standin", "--http-port", str(self.http),
             "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--run-dir", self.run_dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        import httpx

        deadline = time.time() + 300
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"cassava serve cloud exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/v2/models/cassava/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.__exit__()
        raise TimeoutError("the cloud server did not become ready in 300 s")

    def __exit__(self, *exc):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def tutorial_way(url: str, samples) -> dict:
    """The tutorial's client: float32 NumpyCodec JSON, batches of 9, sequential."""
    import httpx

    from cassava.shared.preprocess import preprocess
    from cassava.shared.protocol.v2 import build_request, decode_response
    from mlserver.types import InferenceResponse

    sent = 0
    predictions = []
    started = time.perf_counter()
    with httpx.Client(timeout=120) as client:
        for start in range(0, len(samples), TUTORIAL_BATCH):
            pixels = np.stack([preprocess(s.source, 224) for s in samples[start:start + TUTORIAL_BATCH]])
            body = json.dumps(build_request("float32", pixels).model_dump()).encode()  # what `json=request.dict()` sends
            sent += len(body)
            answer = client.post(f"{url}/v2/models/cassava/infer", content=body, headers={"content-type": "application/json"})
            answer.raise_for_status()
            predictions += decode_response(InferenceResponse.model_validate_json(answer.content))[2]
    seconds = time.perf_counter() - started
    return {"images_per_s": len(samples) / seconds, "bytes_per_image": sent / len(samples), "predictions": predictions}


def client_way(url: str, samples, wire: str = "compact", grpc_address: str = None, batch_size: int = 16, concurrency: int = 2) -> dict:
    """This client's own code path (ServerBackend + classify_samples); bytes are the request bodies it sends."""
    from cassava.shared.client.backends import ServerBackend
    from cassava.shared.client.predict import classify_samples
    from cassava.shared.preprocess import preprocess
    from cassava.shared.client.routing import SingleRoute, Endpoint
    from cassava.shared.protocol.transport import make_transport

    grpc = grpc_address is not None
    backend = ServerBackend(SingleRoute(Endpoint("cloud", make_transport(url, "cassava", grpc, grpc_address))), wire=wire)
    try:
        started = time.perf_counter()
        records, _ = classify_samples(backend, samples, batch_size, progress=False, concurrency=concurrency)
        seconds = time.perf_counter() - started
    finally:
        backend.close()
    failed = [r for r in records if not r.get("prediction")]
    if failed:
        raise RuntimeError(f"{len(failed)} images failed: {failed[0].get('error')}")
    sent = _request_bytes(samples, wire, grpc, batch_size, preprocess)
    return {"images_per_s": len(samples) / seconds, "bytes_per_image": sent / len(samples),
            "predictions": [r["prediction"] for r in records]}


def _request_bytes(samples, wire, grpc, batch_size, preprocess) -> int:
    """The same requests rebuilt off the clock and measured: JSON body for REST, protobuf size for gRPC."""
    from cassava.shared.protocol.images import original_file
    from cassava.shared.protocol.v2 import build_request

    total = 0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        pixels = np.stack([preprocess(s.source, 224) for s in chunk])
        photos = [original_file(s.source) for s in chunk] if wire == "photo" else None
        request = build_request(wire, pixels=pixels, photos=photos, grpc=grpc, request_id="x")
        if grpc:
            from mlserver.grpc.converters import ModelInferRequestConverter

            total += ModelInferRequestConverter.from_types(request, model_name="cassava").ByteSize()
        else:
            total += len(request.model_dump_json(exclude_none=True))
    return total


def main() -> dict:
    samples, what = photos()
    rows = {}
    with CloudServer() as server:
        client_way(server.url, samples[:32])  # warm-up: TF graph, connections, caches
        rows["tutorial float32 JSON (batch 9, sequential)"] = tutorial_way(server.url, samples)
        rows["client default: compact REST (batch 16, 2 in flight)"] = client_way(server.url, samples)
        rows["client --grpc (compact)"] = client_way(server.url, samples, grpc_address=server.grpc_address)
        rows["client --wire uint8"] = client_way(server.url, samples, wire="uint8")
    baseline = rows["tutorial float32 JSON (batch 9, sequential)"]
    default = rows["client default: compact REST (batch 16, 2 in flight)"]
    agree = sum(a == b for a, b in zip(baseline["predictions"], default["predictions"]))
    result = {
        "images": len(samples), "photos": what, "cores": os.cpu_count(),
        "rows": {name: {"images_per_s": round(r["images_per_s"], 1), "bytes_per_image": int(r["bytes_per_image"]),
                        "speedup": round(r["images_per_s"] / baseline["images_per_s"], 2),
                        "bytes_ratio": round(r["bytes_per_image"] / baseline["bytes_per_image"], 4)} for name, r in rows.items()},
        "speedup_default_vs_tutorial": round(default["images_per_s"] / baseline["images_per_s"], 2),
        "target_speedup": 3.0,
        "same_predictions": f"{agree}/{len(samples)}",
        "model": "stand-in model, synthetic data (served by cassava serve cloud --model standin)",
    }
    result["meets_target"] = result["speedup_default_vs_tutorial"] >= result["target_speedup"]
    print(table(result))
    return result


def table(result: dict) -> str:
    lines = [f"client end-to-end, {result['images']} images: {result['photos']}; {result['model']}; {result['cores']} cores",
             f"{'way':<55} {'img/s':>8} {'x tutorial':>10} {'bytes/img':>11} {'x bytes':>8}"]
    for name, row in result["rows"].items():
        lines.append(f"{name:<55} {row['images_per_s']:>8.1f} {row['speedup']:>10.2f} {row['bytes_per_image']:>11,} {row['bytes_ratio']:>8.3f}")
    lines.append(f"default vs tutorial: {result['speedup_default_vs_tutorial']:.2f}x (target >= {result['target_speedup']:g}x: "
                 f"{'met' if result['meets_target'] else 'NOT met'}); same predictions on {result['same_predictions']} images")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
