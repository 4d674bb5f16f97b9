"""The decoded-pixel budget (issue 26): a real edge MLServer (int8 stand-in, shipped settings) under requests whose
photos declare far more pixels than they weigh, plus the JPEG draft path in process.

  bomb request   64 PNGs of 7000x7000 pixels, one colour (160 KB each, 13.6 MB of base64 JSON): seconds to the 413
                 and the server's peak RSS growth meanwhile
  memory         RSS after 200 requests mixing such bombs (refused), single 7000x7000 PNGs (served), 12 MP phone JPEGs
                 and normal photos, ÷ the RSS after normal traffic alone
  barrage        p95 latency of a client sending normal photos while 4 clients send bombs, ÷ without them
  12 MP JPEG     decoding + resizing it to the model's input: the exact path now (only the rows the resize reads
                 leave Pillow) ÷ before (the whole image into numpy, then float32), the same pixels; and the opt-in
                 draft path (DCT-domain downscale), with the real model's top-1 agreement between draft and exact on
                 the real photos (when ../shared is there)

Normal photos are the 27 real photos of ../shared (800x600 JPEGs, sent as files: the `photo` wire), or stand-in
photos without them. The 12 MP JPEGs are real photos upscaled 5x (Lanczos), which have less fine detail than a
phone's own 12 MP: what they prove about draft agreement is limited, and said beside the number.

    python benchmarks/bench_budget.py      (BENCH_SECONDS=10: seconds per barrage level; BENCH_AGREEMENT=0 skips
                                            the real-model agreement, which loads TensorFlow)
"""
from __future__ import annotations

import base64
import io
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import REAL_CLASSES, REAL_MODEL, REAL_PHOTOS, standin_tflite, tier_server  # noqa: E402

from cassava.testing import PeakRss, tree_rss_mb  # noqa: E402

# Targets, from the issue: the bomb request refused within a second (it is refused from headers, so the time is the
# body's transfer and parsing); memory back within 10 % of steady after a burst; normal requests at most twice as
# slow (p95) while 4 clients send bombs, with none failing; a 12 MP JPEG in at most half the time it took before
# (the old path's float32 copy of every pixel was most of it); draft only if the real model's answers are unchanged.
TARGET_BOMB_SECONDS = 1.0
TARGET_RSS_AFTER = 1.1
TARGET_P95_BARRAGE = 2.0
TARGET_DRAFT_TIME = 0.5  # for the exact path now ÷ before
TARGET_AGREEMENT = 1.0
MIXED_REQUESTS = 200


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (70, 140, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


def _body(photos) -> bytes:
    return json.dumps({"inputs": [{"name": "photos", "datatype": "BYTES", "shape": [len(photos)],
                                   "parameters": {"content_type": "base64"},
                                   "data": [base64.b64encode(p).decode() for p in photos]}]}).encode()


def normal_photos() -> list:
    if REAL_PHOTOS.is_dir():
        return [p.read_bytes() for p in sorted(REAL_PHOTOS.rglob("*.jpg"))]
    from cassava.shared.data import load_samples

    return [Path(s.source).read_bytes() for s in load_samples(["standin"], 16)]


def phone_jpeg(photo: bytes, width: int = 4000, height: int = 3000) -> bytes:
    """A 12 MP JPEG: a real photo upscaled (Lanczos), quality 90, as a phone saves."""
    from PIL import Image

    image = Image.open(io.BytesIO(photo)).convert("RGB")
    if image.width < image.height:
        width, height = height, width
    buffer = io.BytesIO()
    image.resize((width, height), Image.LANCZOS).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _post(http, url: str, body: bytes):
    return http.post(url, content=body, headers={"content-type": "application/json"})


def settle(pid: int, seconds: float = 3.0) -> float:
    """RSS after `seconds` of quiet (MLServer's own periodic work settles)."""
    time.sleep(seconds)
    return tree_rss_mb(pid)


def latencies(url: str, bodies, seconds: float, stop: threading.Event = None) -> tuple:
    """One client posting normal photos back to back: (latencies in s, failures)."""
    import httpx

    out, failed = [], []
    with httpx.Client(timeout=120) as http:
        end, i = time.perf_counter() + seconds, 0
        while time.perf_counter() < end:
            started = time.perf_counter()
            reply = _post(http, url, bodies[i % len(bodies)])
            (out if reply.status_code == 200 else failed).append(time.perf_counter() - started)
            i += 1
    return out, failed


def bomber(url: str, bodies, stop: threading.Event, counts: dict, lock: threading.Lock):
    import httpx

    with httpx.Client(timeout=300) as http:
        i = 0
        while not stop.is_set():
            status = _post(http, url, bodies[i % len(bodies)]).status_code
            with lock:
                counts[status] = counts.get(status, 0) + 1
            i += 1


def serving(server, photos, phone) -> dict:
    import httpx
    import numpy as np

    url = f"{server.url}/v2/models/{server.model_name}/infer"
    pid = server.process.pid
    seconds = float(os.environ.get("BENCH_SECONDS", "10"))
    bomb = _png(7000, 7000)
    normal = [_body([p]) for p in photos]
    bomb64, bomb1, phone1 = _body([bomb] * 64), _body([bomb]), _body([phone])
    with httpx.Client(timeout=300) as http:
        for body in normal * 3:  # warm-up: steady state for normal traffic
            assert _post(http, url, body).status_code == 200
        steady = settle(pid)

        # the 64-bomb request
        with PeakRss(pid) as rss:
            started = time.perf_counter()
            reply = _post(http, url, bomb64)
            bomb_seconds = time.perf_counter() - started
        bomb_status, bomb_message = reply.status_code, reply.json().get("error", "")[:160]

        # 200 mixed requests from 2 clients
        cycle = ["n", "p", "b64", "n", "b1", "p", "n", "n", "b64", "n"]
        kinds = {"n": normal, "p": [phone1], "b64": [bomb64], "b1": [bomb1]}
        statuses, lock = {}, threading.Lock()

        def mixed(offset: int):
            with httpx.Client(timeout=300) as own:
                for i in range(offset, MIXED_REQUESTS, 2):
                    kind = cycle[i % len(cycle)]
                    status = _post(own, url, kinds[kind][i % len(kinds[kind])]).status_code
                    with lock:
                        statuses[f"{kind} {status}"] = statuses.get(f"{kind} {status}", 0) + 1

        with PeakRss(pid) as mixed_rss:
            started = time.perf_counter()
            threads = [threading.Thread(target=mixed, args=(k,)) for k in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(1800)
            mixed_seconds = time.perf_counter() - started
        after = settle(pid)

    # normal latency without and with a bomb barrage (4 clients: the 64-bomb request and a single served bomb)
    alone, alone_failed = latencies(url, normal, seconds)
    stop, counts, lock = threading.Event(), {}, threading.Lock()
    bombers = [threading.Thread(target=bomber, args=(url, [bomb64, bomb1] if k % 2 else [bomb1, bomb64], stop,
                                                      counts, lock), daemon=True) for k in range(4)]
    with PeakRss(pid) as barrage_rss:
        for thread in bombers:
            thread.start()
        time.sleep(1.0)
        during, during_failed = latencies(url, normal, seconds)
        stop.set()
        for thread in bombers:
            thread.join(300)
    p95 = (float(np.percentile(alone, 95)) * 1000, float(np.percentile(during, 95)) * 1000)
    return {"steady_mb": steady, "bomb_seconds": bomb_seconds, "bomb_status": bomb_status,
            "bomb_message": bomb_message, "bomb_peak_growth_mb": rss.peak - steady,
            "mixed_statuses": statuses, "mixed_seconds": mixed_seconds, "mixed_peak_mb": mixed_rss.peak,
            "after_mb": after, "p95_alone_ms": p95[0], "p95_barrage_ms": p95[1], "normal_alone": len(alone),
            "normal_during": len(during), "failed_normal": len(alone_failed) + len(during_failed),
            "barrage_statuses": counts, "barrage_peak_mb": barrage_rss.peak}


def whole_image_path(photo: bytes, size: int):
    """The path before issue 26, as a baseline: the whole image into numpy, all of it to float32, then the resize."""
    import numpy as np
    from PIL import Image

    from cassava.shared.preprocess import resize_bilinear

    rgb = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"))
    return np.clip(np.rint(resize_bilinear(rgb.astype(np.float32), size)), 0, 255).astype(np.uint8)


def draft_timing(phones, size: int = 256, rounds: int = 3) -> dict:
    import numpy as np

    from cassava.shared.preprocess import preprocess

    paths = {"before": lambda p: whole_image_path(p, size), "exact": lambda p: preprocess(p, size),
             "draft": lambda p: preprocess(p, size, draft=True)}
    times = {name: [] for name in paths}
    for _ in range(rounds):
        for photo in phones:
            for name, path in paths.items():
                started = time.perf_counter()
                path(photo)
                times[name].append(time.perf_counter() - started)
    same = all(np.array_equal(whole_image_path(p, size), preprocess(p, size)) for p in phones)
    return {**{f"{name}_ms": float(np.median(t)) * 1000 for name, t in times.items()}, "exact_same_pixels": same}


def draft_agreement(photos) -> dict:
    """The real model (256 px, raw 0-255, 5 classes) on each real photo upscaled to 12 MP: exact vs draft top-1, and
    each against the photo's answer at its own size (800x600 mostly, where draft never applies)."""
    import numpy as np

    from cassava.cloud.model import load_tf_classifier
    from cassava.shared.preprocess import preprocess

    classifier = load_tf_classifier(str(REAL_MODEL), input_scale=255.0, classes=REAL_CLASSES.split(","))
    native, exact, draft = [], [], []
    for photo in photos:
        phone = phone_jpeg(photo)
        native.append(preprocess(photo, 256))
        exact.append(preprocess(phone, 256))
        draft.append(preprocess(phone, 256, draft=True))
    top1 = {name: classifier.predict(np.stack(x).astype(np.float32)).argmax(1)
            for name, x in (("native", native), ("exact", exact), ("draft", draft))}
    return {"photos": len(photos), "same_top1": int((top1["exact"] == top1["draft"]).sum()),
            "exact_as_native": int((top1["exact"] == top1["native"]).sum()),
            "draft_as_native": int((top1["draft"] == top1["native"]).sum())}


MEMORY_VARIANTS = ("neither", "malloc_trim", "mmap threshold", "both")


def memory_variant(variant: str) -> dict:
    """In this process, the decode stage alone (PhotoDecoder) with one of the ways of handing memory back: 40 requests,
    2 at a time, mixing a 7000x7000 PNG, two 12 MP JPEGs and real photos. -> RSS after real photos alone and after."""
    import asyncio

    from cassava.shared.protocol.v2 import photos_input
    from cassava.shared.server import decoding
    from cassava.shared.spec import ModelSpec

    if variant in ("mmap threshold", "both"):
        decoding.keep_large_blocks_in_mmap()
    if variant in ("neither", "mmap threshold"):
        decoding.release_memory = lambda: None
    normal = normal_photos()[:8]
    phone, bomb = phone_jpeg(normal[0]), _png(7000, 7000)
    spec = ModelSpec(input_size=256, input_scale=255.0, class_names=REAL_CLASSES.split(","))
    decoder = decoding.PhotoDecoder()

    async def run() -> dict:
        for _ in range(3):
            await decoder.decode(photos_input(normal), spec)
        steady = tree_rss_mb(os.getpid())
        kinds = ([bomb], [phone] * 2, normal, normal)
        for i in range(0, 40, 2):
            await asyncio.gather(*(decoder.decode(photos_input(kinds[j % 4]), spec) for j in (i, i + 1)))
        for _ in range(3):
            await decoder.decode(photos_input(normal), spec)
        return {"steady_mb": steady, "after_mb": tree_rss_mb(os.getpid())}

    return asyncio.run(run())


def memory_variants() -> dict:
    """Each variant in a fresh process (glibc's settings cannot be undone in one)."""
    import subprocess

    out = {}
    for variant in MEMORY_VARIANTS:
        result = subprocess.run([sys.executable, __file__, "--memory-variant", variant], capture_output=True,
                                text=True, timeout=1800)
        if result.returncode != 0:
            raise RuntimeError(f"memory variant {variant}: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
        out[variant] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def main() -> dict:
    photos = normal_photos()
    phones = [phone_jpeg(p) for p in photos[:4]]
    model = standin_tflite("int8")
    server = tier_server("edge", model)
    with server:
        result = serving(server, photos, phones[0])
    timing = draft_timing(phones)
    agreement = None
    if os.environ.get("BENCH_AGREEMENT", "1") != "0" and REAL_MODEL.exists() and REAL_PHOTOS.is_dir():
        more = REAL_PHOTOS.parent / "cassava-more"  # the 300 more real photos, when there
        agreement = draft_agreement(photos + [p.read_bytes() for p in sorted(more.rglob("*.jpg"))])
    result.update(timing, agreement=agreement, memory=memory_variants())

    r = result
    print(f"edge server, int8 stand-in, shipped settings (max_image_pixels 67,108,864, max_request_pixels "
          f"268,435,456, max_decoding_pixels 67,108,864); normal = {len(photos)} photos sent as files")
    print(f"  steady RSS after normal traffic          {r['steady_mb']:.0f} MB")
    print(f"  64 x 7000x7000 PNG request               HTTP {r['bomb_status']} in {r['bomb_seconds']:.2f} s, "
          f"peak RSS +{r['bomb_peak_growth_mb']:.0f} MB: {r['bomb_message']}")
    print(f"  {MIXED_REQUESTS} mixed requests, 2 clients, {r['mixed_seconds']:.0f} s   {r['mixed_statuses']}; "
          f"peak {r['mixed_peak_mb']:.0f} MB, after {r['after_mb']:.0f} MB")
    print(f"  normal p95 alone / during 4-client barrage  {r['p95_alone_ms']:.0f} / {r['p95_barrage_ms']:.0f} ms "
          f"({r['normal_alone']} / {r['normal_during']} requests, {r['failed_normal']} failed); bombs answered "
          f"{r['barrage_statuses']}, peak RSS {r['barrage_peak_mb']:.0f} MB")
    print(f"  12 MP JPEG -> 256 px, before / exact / draft  {r['before_ms']:.0f} / {r['exact_ms']:.0f} / "
          f"{r['draft_ms']:.0f} ms (median); exact = before, pixel for pixel: {r['exact_same_pixels']}")
    if agreement:
        print(f"  real model, real photos upscaled to 12 MP: draft top-1 = exact top-1 on {agreement['same_top1']}/"
              f"{agreement['photos']}; = the photo's own-size answer: exact {agreement['exact_as_native']}, "
              f"draft {agreement['draft_as_native']}")
    print("  memory handed back (in process, decode stage alone), RSS after a burst ÷ before: " + ", ".join(
        f"{name} {m['after_mb'] / m['steady_mb']:.2f}× ({m['steady_mb']:.0f} → {m['after_mb']:.0f} MB)"
        for name, m in r["memory"].items()))
    ratios = [
        {"name": "64 x 7000x7000 PNG request: seconds to the 413", "value": r["bomb_seconds"],
         "target": TARGET_BOMB_SECONDS, "better": "lower", "unit": " s",
         "note": f"HTTP {r['bomb_status']}, peak RSS +{r['bomb_peak_growth_mb']:.0f} MB",
         "pass": r["bomb_status"] == 413 and r["bomb_seconds"] <= TARGET_BOMB_SECONDS},
        {"name": f"edge RSS after {MIXED_REQUESTS} mixed requests ÷ steady", "value": r["after_mb"] / r["steady_mb"],
         "target": TARGET_RSS_AFTER, "better": "lower", "unit": "×",
         "note": f"{r['steady_mb']:.0f} → {r['after_mb']:.0f} MB, peak {r['mixed_peak_mb']:.0f} MB"},
        {"name": "normal p95 during a 4-client bomb barrage ÷ without",
         "value": r["p95_barrage_ms"] / r["p95_alone_ms"],
         "target": TARGET_P95_BARRAGE, "better": "lower", "unit": "×",
         "note": f"{r['p95_alone_ms']:.0f} → {r['p95_barrage_ms']:.0f} ms, {r['failed_normal']} failed",
         "pass": r["p95_barrage_ms"] / r["p95_alone_ms"] <= TARGET_P95_BARRAGE and r["failed_normal"] == 0},
        {"name": "12 MP JPEG decode + resize, exact path now ÷ before (same pixels)",
         "value": r["exact_ms"] / r["before_ms"], "target": TARGET_DRAFT_TIME, "better": "lower", "unit": "×",
         "note": f"{r['before_ms']:.0f} → {r['exact_ms']:.0f} ms; opt-in draft {r['draft_ms']:.0f} ms",
         "pass": r["exact_ms"] / r["before_ms"] <= TARGET_DRAFT_TIME and r["exact_same_pixels"]},
    ]
    if agreement:
        ratios.append({"name": "real model top-1, draft = exact, 12 MP upscaled real photos",
                       "value": agreement["same_top1"] / agreement["photos"], "target": TARGET_AGREEMENT,
                       "better": "higher", "note": f"{agreement['same_top1']}/{agreement['photos']}"})
    return {**result, "ratios": ratios}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--memory-variant"]:
        print(json.dumps(memory_variant(sys.argv[2])))
    else:
        main()
