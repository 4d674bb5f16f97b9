"""`cassava watch`'s journal: what was done, on disk, so that a restart neither repeats nor loses anything.

`<out>` holds one JSON line per image classified (ResultLog: each line flushed and fsynced before the next image);
`<out>.settled.jsonl` (escalating) or `<out>.forwarded.jsonl` (forwarding) one line per photo the cloud answered or
refused. `JournalBook` is how the uplink (uplink.py) writes that second file: a photo's line is written once, and an
outbox entry whose photo already has one is only tidied up, so a kill -9 between the two never settles twice.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sys
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from .outbox import Entry

TOP_K = 3


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class ResultLog:
    """An append-only JSON-lines file; every line is flushed and fsynced before the next image is taken."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.records = []
        if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            with open(path, "a") as handle:  # a line cut by power loss: end it, so the next record starts clean
                handle.write("\n")
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut by power loss: that image was not recorded, so it is classified again
        self._handle = open(path, "a")

    def ids(self) -> set:
        return {r["id"] for r in self.records}

    def append(self, record: dict) -> None:
        self._handle.write(json.dumps(record) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.records.append(record)

    def close(self) -> None:
        self._handle.close()


def top_k(probabilities: np.ndarray, class_names, k: int = TOP_K):
    from cassava.shared.labels import display_name
    from cassava.shared.labels import top_k as ranked

    return [{"class": name, "name": display_name(name), "probability": round(p, 6)}
            for name, p in ranked(probabilities, class_names, k)]


class JournalBook:
    """The uplink's book for `cassava watch` (see settlement.StoreBook): one line per photo in the settled or forwarded
    file. Outbox entries carry the photo's id (`photo_id`) and, escalating, why it went (`reason`: hard or audit)."""

    def __init__(self, log: ResultLog, escalating: bool):
        self.log, self.escalating = log, escalating
        self.done = {r["id"] for r in log.records}
        self._lock = threading.Lock()

    def queued(self, entry: Entry) -> None:
        pass  # the journal's record of the photo says it escalates

    def is_final(self, entry: Entry) -> bool:
        return entry.meta["photo_id"] in self.done

    def settled(self, entry: Entry, cloud: dict) -> Optional[dict]:
        line = self._line(entry, status=200, cloud_prediction=cloud["prediction"],
                          edge_prediction=entry.meta["edge"]["prediction"],
                          cloud_probability=cloud["probability"])
        if self.escalating:
            line["agree"] = cloud["prediction"] == line["edge_prediction"]
        if not self._write(line):
            return None
        if self.escalating:
            print(json.dumps({"file": entry.meta.get("file"), "settled_by": "cloud", "reason": line["reason"],
                              "class": cloud["prediction"], "edge": line["edge_prediction"]}), flush=True)
        return {**line, "status": "settled"}

    def unsettled(self, entry: Entry, reason: str, status: Optional[int] = None) -> Optional[dict]:
        """Refused by the cloud (its status and reason recorded, never sent again) or evicted unsent."""
        line = self._line(entry, status=status, error=reason[:300])
        return line if self._write(line) else None

    def _line(self, entry: Entry, **fields) -> dict:
        line = {"id": entry.meta["photo_id"], "time": now(), "bytes": entry.meta["bytes"]}
        if self.escalating:
            line["reason"] = entry.kind
        return {**line, **fields}

    def _write(self, line: dict) -> bool:
        with self._lock:
            if line["id"] in self.done:
                return False
            self.log.append(line)
            self.done.add(line["id"])
        return True


def settled_summary(settled) -> str:
    """'3 hard photo(s) settled by the cloud; 2 audited: the edge agreed on 2/2; 1,234 bytes per escalation'."""
    answered = [r for r in settled if r.get("status") == 200]
    hard = [r for r in answered if r.get("reason") == "hard"]
    audits = [r for r in answered if r.get("reason") == "audit"]
    text = f"{len(hard)} hard photo(s) settled by the cloud; {len(audits)} audited"
    if audits:
        text += f": the edge agreed on {sum(r['agree'] for r in audits)}/{len(audits)}"
    if answered:
        text += f"; {sum(r['bytes'] for r in answered) / len(answered):,.0f} bytes per escalation"
    return text


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
