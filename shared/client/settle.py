"""`cassava predict --edge URL --settle-wait S`: after the run, wait up to S seconds for the escalating edge to settle
the images it answered provisionally (GET /v2/models/{name}/settlements/{id}, shared/server/settlements.py).

A settled record's `prediction`, `probability` and `answered_by` become the cloud's; the edge's own answer stays beside
them as `edge_prediction`, `edge_probability` and `edge_answered_by`. Records that are still provisional keep the
edge's answer (and say so the same way), so the records always say what was final when the run ended.
"""
from __future__ import annotations

import time
from typing import List

import httpx

POLL_S = 0.5


def follow_settlements(records: List[dict], base_url: str, model_name: str, wait_s: float) -> int:
    """Update `records` in place with their settlements, waiting up to `wait_s`. -> how many were settled."""
    open_ = [r for r in records if r.get("answered_by") == "edge-provisional" and r.get("settlement_id")]
    for record in open_:
        record.update(edge_prediction=record["prediction"], edge_probability=record["probability"],
                      edge_answered_by=record["answered_by"])
    settled, deadline = 0, time.monotonic() + wait_s
    with httpx.Client(timeout=10) as client:
        while open_:
            still = []
            for record in open_:
                try:
                    reply = client.get(f"{base_url}/v2/models/{model_name}/settlements/{record['settlement_id']}")
                    answer = reply.json() if reply.status_code == 200 else {}
                except (httpx.HTTPError, ValueError):
                    answer = {}
                if answer.get("status") == "settled":
                    record.update(prediction=answer["prediction"], probability=answer["probability"],
                                  answered_by=answer["answered_by"])
                    names = list(record.get("probabilities") or {})
                    if len(names) == len(answer.get("probabilities") or ()):  # top-3 and plots show the cloud's
                        record["probabilities"] = dict(zip(names, answer["probabilities"]))
                    settled += 1
                elif answer.get("status") != "provisional":  # provisional: final, the cloud will not settle it
                    still.append(record)
            open_ = still
            if not open_ or time.monotonic() >= deadline:
                break
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
    return settled
