"""What the cloud answered for each hard image the edge answered provisionally, by settlement id, kept for clients.

One small JSON file per id in `<outbox>/settlements/`, written to a temporary file and renamed (fsynced when final),
so a restart keeps every answer and the REST extension (shared/server/settlements.py) reads what is there. States:

  pending      queued in the outbox, the edge's answer stands for now
  settled      the cloud answered: `prediction`/`probability`/`answered_by: cloud` are its answer
  provisional  the cloud will not settle it (evicted from the outbox, or its answer was unusable): the edge's stands

A record is final once settled or provisional: settling it again is refused (`settle()` -> False, counted by the
caller as a duplicate), so an image the cloud answered twice (a retry after a lost answer) is settled once.
Records are kept `keep_s` seconds after they were queued and at most `max_records` (the oldest go first).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Optional

from .outbox import HARD, Entry

PENDING, SETTLED, PROVISIONAL = "pending", "settled", "provisional"
DEFAULT_KEEP_S = 7 * 24 * 3600.0
DEFAULT_MAX_RECORDS = 100_000
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{8,64}$")  # secrets.token_urlsafe's alphabet: also a safe file name


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="milliseconds")


class SettlementStore:
    def __init__(self, folder: Path, keep_s: float = DEFAULT_KEEP_S, max_records: int = DEFAULT_MAX_RECORDS):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep_s, self.max_records = keep_s, max_records
        self._lock = threading.Lock()  # one writer at a time decides "already final?"
        self.sweep()

    def _path(self, settlement_id: str) -> Optional[Path]:
        return self.folder / f"{settlement_id}.json" if ID_PATTERN.match(settlement_id or "") else None

    def get(self, settlement_id: str) -> Optional[dict]:
        path = self._path(settlement_id)
        if path is None:
            return None
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def pending(self, settlement_id: str, edge: dict, queued: float) -> dict:
        """The edge's provisional answer (`edge`: prediction, probability, probabilities), as the record starts."""
        record = {"id": settlement_id, "status": PENDING, "answered_by": "edge-provisional",
                  "prediction": edge["prediction"], "probability": edge["probability"],
                  "probabilities": edge.get("probabilities"), "edge": edge, "cloud": None,
                  "queued": _iso(queued), "queued_s": queued, "settled": None, "settle_seconds": None, "reason": None}
        with self._lock:  # never over a final record (the entry may be evicted or settled before this runs)
            final = self.get(settlement_id)
            if (final or {}).get("status") in (SETTLED, PROVISIONAL):
                return final
            self._write(record, durable=False)  # the outbox entry is the durable part; this is re-made from it
        return record

    def settle(self, settlement_id: str, cloud: dict, edge: dict, queued: float, now: Optional[float] = None
               ) -> Optional[dict]:
        """The cloud's answer. -> the final record, or None when the record was already final (a duplicate)."""
        now = time.time() if now is None else now
        with self._lock:
            if self.is_final(settlement_id):
                return None
            record = {"id": settlement_id, "status": SETTLED, "answered_by": "cloud",
                      "prediction": cloud["prediction"], "probability": cloud["probability"],
                      "probabilities": cloud.get("probabilities"), "edge": edge, "cloud": cloud,
                      "queued": _iso(queued), "queued_s": queued, "settled": _iso(now),
                      "settle_seconds": round(now - queued, 3), "reason": None}
            self._write(record, durable=True)
        return record

    def keep_provisional(self, settlement_id: str, edge: dict, queued: float, reason: str) -> Optional[dict]:
        """The cloud will not settle it: the edge's answer is final, and the record says why."""
        with self._lock:
            if self.is_final(settlement_id):
                return None
            record = {"id": settlement_id, "status": PROVISIONAL, "answered_by": "edge-provisional",
                      "prediction": edge["prediction"], "probability": edge["probability"],
                      "probabilities": edge.get("probabilities"), "edge": edge, "cloud": None,
                      "queued": _iso(queued), "queued_s": queued, "settled": _iso(time.time()),
                      "settle_seconds": None, "reason": reason}
            self._write(record, durable=True)
        return record

    def is_final(self, settlement_id: str) -> bool:
        return (self.get(settlement_id) or {}).get("status") in (SETTLED, PROVISIONAL)

    def sweep(self, now: Optional[float] = None) -> int:
        """Drop records past `keep_s`, then the oldest beyond `max_records`. -> how many went."""
        now = time.time() if now is None else now
        files = sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for stray in self.folder.glob("*.tmp"):
            stray.unlink(missing_ok=True)
        gone = [p for p in files if p.stat().st_mtime < now - self.keep_s]
        kept = files[len(gone):]  # sorted by time: the expired ones come first
        gone += kept[:max(0, len(kept) - self.max_records)]
        for path in gone:
            path.unlink(missing_ok=True)
        return len(gone)

    def _write(self, record: dict, durable: bool) -> None:
        path = self._path(record["id"])
        if path is None:
            raise ValueError(f"settlement id {record['id']!r}: not a token")
        temporary = path.with_suffix(f".{threading.get_ident()}.tmp")
        with open(temporary, "w") as handle:
            json.dump(record, handle)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, path)


class StoreBook:
    """Where the server's settlements go: hard images' records in a SettlementStore, which clients read by id.
    A book says whether an entry is final already, and records a settlement or an unsettled end at most once
    (-> the record, or None when it was final already: a duplicate)."""

    def __init__(self, store: SettlementStore):
        self.store = store

    def queued(self, entry: Entry) -> None:
        if entry.kind == HARD:
            self.store.pending(entry.id, entry.meta["edge"], entry.queued)

    def is_final(self, entry: Entry) -> bool:
        return entry.kind == HARD and self.store.is_final(entry.id)

    def settled(self, entry: Entry, cloud: dict) -> Optional[dict]:
        if entry.kind != HARD:
            return {"status": "settled", "cloud": cloud}  # an audit measures; no client asks for it
        return self.store.settle(entry.id, cloud, entry.meta["edge"], entry.queued)

    def unsettled(self, entry: Entry, reason: str, status: Optional[int] = None) -> Optional[dict]:
        if entry.kind != HARD:
            return None
        return self.store.keep_provisional(entry.id, entry.meta["edge"], entry.queued, reason)

    def sweep(self) -> None:
        self.store.sweep()
