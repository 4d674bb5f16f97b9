"""`cassava demo`'s field step: the edge as it runs in the field (stand-in model, synthetic data).

An edge started with `--escalate-to` the cloud through an emulated slow uplink (cassava.linkemu: 256 kbit/s, 150 ms
one way) classifies the photos; hard ones are answered by the cloud within the request when the link allows it,
otherwise `edge-provisional` at once and settled by the cloud later (docs/field-link.md). The demo follows them as
`cassava predict --edge URL --batch-size 1 --settle-wait S` does (one photo per request, as a phone sends them) and
says who answered what, and how long settling took.

The stand-in's converted copy stores escalate_below 0 (nothing is hard), so the demo chooses its own threshold: the
middle of the plain edge's confidences on these very photos, so that about half of the leaves are hard.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx

from cassava.shared.policy import UNKNOWN
from cassava.shared.spec import STANDIN_NOTE

LINK_KBIT, LINK_DELAY_MS = 256, 150  # a 3G-ish field uplink (issue 30's)
SETTLE_WAIT_S = 60.0  # how long the demo follows provisional answers after its run (docs/field-link.md)


def demo_threshold(edge_records) -> float:
    """Between the two middle confidences of the photos the edge took for leaves (so about half are hard)."""
    sure = sorted(r["probability"] for r in edge_records if r.get("prediction") and r["prediction"] != UNKNOWN)
    if not sure:
        return 0.5
    if len(sure) == 1:
        return min(1.0, sure[0] + 1e-3)
    middle = len(sure) // 2
    return round((sure[middle - 1] + sure[middle]) / 2, 4)


def field_step(cloud, edge_records, out: Path, start_server, classify) -> dict:
    """Start the escalating edge behind the emulated link, classify, follow settlements, stop it. -> the summary row.
    `start_server(name, *flags)` and `classify(name, url, settle)` are the demo's own (cli/demo.py)."""
    from cassava.linkemu import LinkEmulator

    started = time.monotonic()
    threshold = demo_threshold(edge_records)
    shutil.rmtree(out / "run" / "field-edge", ignore_errors=True)  # a previous demo's outbox and settlements
    link = LinkEmulator(cloud.ports[0], rate_kbit=LINK_KBIT, delay_ms=LINK_DELAY_MS).start()
    print(f"link: {LINK_KBIT} kbit/s, {LINK_DELAY_MS} ms one way (emulated, {link.url} -> {cloud.url}); "
          f"escalate below {threshold:.4f}: chosen for the demo, the middle of the edge's confidences on these "
          f"photos ({STANDIN_NOTE}); a request waits at most the edge's default 2 s for the cloud, then the edge "
          f"answers provisionally and the cloud settles it later", flush=True)
    try:
        # audits off: the link carries only the hard photos, so the counts below are theirs
        server = start_server("field-edge", "--escalate-to", link.url, "--escalate-below", threshold,
                              "--audit-rate", 0, "--outbox", out / "run" / "field-edge" / "outbox")
    except BaseException:
        link.stop()
        raise
    try:
        row = classify("field", server.url, (server.url, "cassava", SETTLE_WAIT_S))
        records = json.loads(Path(row["json"]).read_text())
        row.update(count_answers(records), settle_seconds=settle_seconds(server.url, records),
                   threshold=threshold, link={"rate_kbit": LINK_KBIT, "delay_ms": LINK_DELAY_MS},
                   settle_wait_s=SETTLE_WAIT_S)
    finally:
        server.stop()
        link.stop()
    row["seconds"] = round(time.monotonic() - started, 1)
    print(field_text(row), flush=True)
    return row


def count_answers(records) -> dict:
    """Who answered each photo, in the end."""
    done = [r for r in records if r.get("prediction")]
    later = [r for r in done if r.get("edge_answered_by") == "edge-provisional"]
    return {"answered_by_edge": sum(r.get("answered_by") == "edge" for r in done),
            "cloud_in_request": sum(r.get("answered_by") == "cloud" and "edge_answered_by" not in r for r in done),
            "provisional_then_cloud": sum(r.get("answered_by") == "cloud" for r in later),
            "still_provisional": sum(r.get("answered_by") == "edge-provisional" for r in done),
            "not_answered": len(records) - len(done)}


def settle_seconds(url: str, records) -> list:
    """Queued -> settled on the edge, for each photo the cloud settled after its request (the settlement records)."""
    times = []
    with httpx.Client(timeout=10) as client:
        for record in records:
            if record.get("edge_answered_by") == "edge-provisional" and record.get("answered_by") == "cloud":
                answer = client.get(f"{url}/v2/models/cassava/settlements/{record['settlement_id']}").json()
                times.append(answer.get("settle_seconds"))
    return times


def field_text(row: dict) -> str:
    settled = sorted(t for t in row["settle_seconds"] if t is not None)
    times = f" (settle time median {settled[len(settled) // 2]:.1f} s, max {settled[-1]:.1f} s)" if settled else ""
    return (f"field: {row['images']} photos: {row['answered_by_edge']} answered by the edge, "
            f"{row['cloud_in_request']} by the cloud within the request, {row['provisional_then_cloud']} provisional "
            f"then settled by the cloud{times}, {row['still_provisional']} still provisional after "
            f"{row['settle_wait_s']:g} s; step took {row['seconds']:.0f} s")
