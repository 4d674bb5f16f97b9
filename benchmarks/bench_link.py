"""Joint inference over an emulated field uplink (issue 30): answer now, settle later.

Real MLServer processes on loopback: a cloud, an escalating edge whose `escalate_to` goes through cassava.linkemu
(bandwidth, one-way delay, a blackhole switch), and the same edge model without escalation. Photos go one per
request at about one per second, in turn to the escalating and the plain edge. Per link (LAN, 256 kbit/s + 150 ms,
64 kbit/s + 300 ms, and 256 kbit/s blackholed for OUTAGE_S mid-run): who answered, edge-answered p95 latency ÷ the
plain edge's on the same photos, hard photos settled (the settlement records), p95 time to settle, duplicates,
evictions and the outbox's largest depth (its metrics, sampled every photo).

Models and data (say which in every figure):
  --real     ../shared/models/cassava-cnn-256 (TF) and its int8 `cassava convert` copy, calibrated and thresholded on
             half A of ../shared/data/cassava-more; the photos are half B (150, seen by nothing before)
  default    the stand-in (synthetic photos, stand-in TF model and its int8 copy): a test of the system, not a
             diagnosis. The threshold is the edge's 10th-percentile confidence on these very photos (so ~10 % hard).

    python benchmarks/bench_link.py [--real] [-n 60] [--outage 60]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from cassava.linkemu import LinkEmulator

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _servers import REAL_CLASSES, REAL_MODEL, tier_server  # noqa: E402

LINKS = {"lan": (None, 0), "256k": (256, 150), "2g": (64, 300), "outage": (256, 150)}  # (kbit/s, one-way ms)
NAMES = {"lan": "LAN (loopback)", "256k": "256 kbit/s, 150 ms", "2g": "64 kbit/s, 300 ms (2G)",
         "outage": "256 kbit/s, 150 ms, blackholed mid-run"}
TARGET_LATENCY, TARGET_SETTLE_P95_S = 1.1, 30.0


def photos_and_models(real: bool, root: Path, n: int):
    """-> (photo files, cloud model, cloud extra, edge model folder, data note)."""
    if real:
        import bench_joint

        folder_a, half_b = bench_joint.halves(root)
        report = bench_joint.convert(root / "int8", folder_a, {"quantize": "int8"})
        print(f"int8 copy: threshold {report['escalation']['threshold']:.4g} chosen on half A", flush=True)
        photos = [Path(str(s.source)).read_bytes() for s in half_b][:n]
        return (photos, str(REAL_MODEL), {"input_scale": 255.0, "classes": REAL_CLASSES}, root / "int8",
                f"real model cassava-cnn-256 (int8 edge copy), {len(photos)} photos of half B of cassava-more")
    import numpy as np

    from cassava.cloud.standin import ensure_standin
    from cassava.edge.convert import ConvertOptions, convert
    from cassava.shared.classifier import load_classifier, predict_pixels
    from cassava.shared.data import load_samples
    from cassava.shared.preprocess import preprocess

    ensure_standin()
    convert("standin", root / "int8", ConvertOptions(quantize="int8", quiet=True), notify=lambda line: None)
    photos = [Path(str(s.source)).read_bytes() for s in load_samples("standin", n)]
    edge = load_classifier(str(root / "int8"))
    top = predict_pixels(edge, np.stack([preprocess(p, edge.spec.input_size) for p in photos])).max(axis=1)
    threshold = float(np.quantile(top, 0.10)) + 1e-6
    spec = root / "int8" / "cassava-model.json"
    import json

    spec.write_text(json.dumps({**json.loads(spec.read_text()), "escalate_below": threshold}))
    return (photos, "standin", {}, root / "int8",
            f"STAND-IN model and synthetic photos ({len(photos)}), threshold = their 10th-percentile confidence")


def metric(server, name: str) -> float:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def ask(client, server, photo: bytes):
    """-> (seconds, answered_by, settlement id) for one photo file over REST JSON."""
    import base64

    body = {"inputs": [{"name": "photos", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
                        "data": [base64.b64encode(photo).decode()]}]}
    started = time.perf_counter()
    reply = client.post(f"{server.url}/v2/models/cassava/infer", json=body, timeout=120)
    seconds = time.perf_counter() - started
    reply.raise_for_status()
    answer = reply.json()
    by = next((o["data"][0] for o in answer["outputs"] if o["name"] == "answered_by"), None)
    return seconds, by, (answer.get("parameters") or {}).get("settlement_ids", "")


def run_link(name, link, joint, plain, photos, outage_s: float, settle_wait_s: float) -> dict:
    import httpx
    import numpy as np

    rate, delay = LINKS[name]
    link.set(rate, delay)
    link.blackhole(False)
    before = {k: metric(joint, k) for k in ("cassava_duplicate_settlements_total",
                                            "cassava_outbox_evicted_images_total")}
    rows, depth, started = [], 0, time.monotonic()
    outage = (len(photos) // 3, len(photos) // 3 + max(1, int(outage_s))) if "outage" in name else None
    with httpx.Client() as client:
        for i, photo in enumerate(photos):
            if outage and i == outage[0]:
                link.blackhole(True)
            if outage and i == outage[1]:
                link.blackhole(False)
            tick = time.monotonic()
            pair = [(joint, None), (plain, None)] if i % 2 else [(plain, None), (joint, None)]
            answers = {id(server): ask(client, server, photo) for server, _ in pair}
            rows.append((answers[id(joint)], answers[id(plain)]))
            depth = max(depth, metric(joint, "cassava_outbox_images"))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))  # one photo per second
        if outage and len(photos) <= outage[1]:
            link.blackhole(False)
        ids = [j[2] for j, _ in rows if j[1] != "edge"]
        deadline, records = time.monotonic() + settle_wait_s, []
        while time.monotonic() < deadline:
            records = [client.get(f"{joint.url}/v2/models/cassava/settlements/{i}", timeout=10).json() for i in ids]
            if all(r.get("status") in ("settled", "provisional") for r in records):
                break
            time.sleep(1.0)
    edge_answered = [(j[0], p[0]) for j, p in rows if j[1] == "edge"]
    settled = [r for r in records if r.get("status") == "settled"]
    settle_s = [r["settle_seconds"] for r in settled]
    return {
        "link": NAMES[name], "photos": len(rows), "hard": len(ids),
        "cloud_in_request": sum(j[1] == "cloud" for j, _ in rows),
        "provisional": sum(j[1] == "edge-provisional" for j, _ in rows), "settled": len(settled),
        "never_settled": len(ids) - len(settled),
        "edge_p95_ms": 1000 * float(np.percentile([e for e, _ in edge_answered], 95)),
        "plain_p95_ms": 1000 * float(np.percentile([p for _, p in edge_answered], 95)),
        "settle_p95_s": float(np.percentile(settle_s, 95)) if settle_s else None,
        "settle_max_s": max(settle_s) if settle_s else None,
        **{key: metric(joint, name) - before[name] for key, name in (
            ("duplicates", "cassava_duplicate_settlements_total"), ("evicted", "cassava_outbox_evicted_images_total"))},
        "max_outbox": depth, "seconds": time.monotonic() - started,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="the real model on half B of cassava-more (../shared)")
    parser.add_argument("-n", type=int, default=60, help="photos per link (one per second)")
    parser.add_argument("--outage", type=float, default=60, help="seconds the link is blackholed mid-run")
    parser.add_argument("--links", default=",".join(LINKS), help="which links, comma-separated")
    args = parser.parse_args(argv)
    if args.real and not REAL_MODEL.is_dir():
        print(f"skipped: {REAL_MODEL} is absent (../shared holds the third-party test data)")
        return {}
    with tempfile.TemporaryDirectory(prefix="bench-link-") as tmp:
        root = Path(tmp)
        photos, cloud_model, cloud_extra, edge_model, note = photos_and_models(args.real, root, args.n)
        cloud = tier_server("cloud", cloud_model, extra=cloud_extra).start(timeout=600)
        link = LinkEmulator(cloud.http_port).start()
        joint = tier_server("edge", str(edge_model), extra={
            "escalate_to": link.url, "escalate_audit_rate": 0, "escalate_outbox": str(root / "outbox")})
        plain = tier_server("edge", str(edge_model))
        rows = []
        try:
            joint.start(timeout=300)
            plain.start(timeout=300)
            import httpx

            with httpx.Client() as client:  # warm-up: the first request pays for lazy set-up
                for server in (joint, plain):
                    ask(client, server, photos[0])
            for name in args.links.split(","):
                row = run_link(name, link, joint, plain, photos, args.outage, settle_wait_s=600)
                rows.append(row)
                print(row, flush=True)
        finally:
            for server in (joint, plain, cloud):
                server.stop()
            link.stop()
    return report(rows, note, args)


def report(rows, note: str, args) -> dict:
    print(f"\n{note}; one photo per request, ~1 per second, in turn to the escalating and a plain edge; "
          f"outage: the link blackholed for {args.outage:g} s after the first third")
    print("link | hard | settled in the request | provisional then settled | never settled | edge-answered p95 ms "
          "(plain edge) | settle p95 s (max) | duplicates | evicted | outbox max")
    for r in rows:
        later = r["settled"] - r["cloud_in_request"]
        settle = f"{r['settle_p95_s']:.1f} ({r['settle_max_s']:.1f})" if r["settle_p95_s"] is not None else "—"
        print(f"{r['link']} | {r['hard']}/{r['photos']} | {r['cloud_in_request']} | {later} | {r['never_settled']} | "
              f"{r['edge_p95_ms']:.1f} ({r['plain_p95_ms']:.1f}) | {settle} | {r['duplicates']:.0f} | "
              f"{r['evicted']:.0f} | {r['max_outbox']:.0f}")
    return {"rows": rows, "note": note}


if __name__ == "__main__":
    main()
