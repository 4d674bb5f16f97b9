"""The edge's outbox: images waiting for the cloud, on disk, bounded, surviving restarts and kill -9.

One file per entry, `<seq>-<kind>-<id>.box`: a JSON header line (id, kind, when it was queued, the exact form's
name and what the caller keeps with it, the payload's CRC32) and then the payload (the image's exact form). A new
entry is written to a temporary file, fsynced, renamed into place and the folder fsynced: once `put()` returns the
entry survives a power cut, and a half-written entry is never seen (its `.tmp` is removed at the next start).

Budgets: `max_bytes` (payloads and headers) and `max_age_s`; past either, the oldest entries are evicted first and
counted (`evicted`, and the `on_evict` callback), never silently. What stays in memory is a small index per entry
(no payload), so the process does not grow with the images it holds. A file that cannot be read back at start (cut
header, wrong CRC) is moved to `corrupt/`, with one warning line for all of them, and the rest is served.

Ids are `secrets.token_urlsafe`: a client given one cannot guess another's.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import secrets
import threading
import time
import zlib
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

from cassava.shared.errors import CassavaError

log = logging.getLogger("cassava.outbox")

HARD, AUDIT = "hard", "audit"
KINDS = (HARD, AUDIT)
SUFFIX = ".box"
CORRUPT_DIR = "corrupt"
DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # ~2,500 exact forms of ~100 KB
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0


def new_id() -> str:
    return secrets.token_urlsafe(16)


@dataclasses.dataclass(frozen=True)
class Entry:
    """What the index keeps per entry (no payload: `Outbox.payload()` reads it from disk when it is sent)."""

    id: str
    kind: str
    seq: int
    queued: float  # wall-clock time.time() when put, so ages survive a restart
    size: int  # bytes on disk
    path: Path
    meta: dict  # the caller's: the exact form, the edge's answer


class Outbox:
    def __init__(self, folder: Path, max_bytes: int = DEFAULT_MAX_BYTES, max_age_s: float = DEFAULT_MAX_AGE_S,
                 on_evict: Callable[[Entry], None] = lambda entry: None, clock: Callable[[], float] = time.time):
        if max_bytes <= 0 or max_age_s <= 0:
            raise ValueError("outbox budgets must be above 0")
        self.folder = Path(folder)
        self.max_bytes, self.max_age_s, self._on_evict, self._clock = max_bytes, max_age_s, on_evict, clock
        self._lock = threading.Lock()
        self._entries: Dict[str, Entry] = {}  # insertion order = seq order (oldest first)
        self._bytes = 0
        self._seq = 0
        self.evicted = 0
        self.corrupt = 0
        self.folder.mkdir(parents=True, exist_ok=True)
        self._owner = open(self.folder / ".lock", "w")  # one process per outbox: two senders would settle twice
        try:
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._owner.close()
            raise CassavaError(f"outbox {self.folder} is in use by another process (give each edge its own)") from None
        self._load()

    def close(self) -> None:
        self._owner.close()  # the lock goes with it

    # ------------------------------------------------------------------ start-up

    def _load(self) -> None:
        found, bad = [], []
        for path in self.folder.iterdir():
            if path.suffix == ".tmp":
                path.unlink(missing_ok=True)  # never renamed into place: put() had not returned
                continue
            if path.suffix != SUFFIX or not path.is_file():
                continue
            try:
                found.append(self._read_entry(path))
            except (OSError, ValueError, KeyError):
                bad.append(path)
        for entry in sorted(found, key=lambda e: e.seq):
            self._entries[entry.id] = entry
            self._bytes += entry.size
        self._seq = max((e.seq for e in found), default=0)
        if bad:
            aside = self.folder / CORRUPT_DIR
            aside.mkdir(exist_ok=True)
            for path in bad:
                os.replace(path, aside / path.name)
            self.corrupt = len(bad)
            log.warning("outbox %s: %d unreadable entr%s moved to %s; the other %d are kept", self.folder, len(bad),
                        "y" if len(bad) == 1 else "ies", aside, len(found))
        self.expire()

    def _read_entry(self, path: Path) -> Entry:
        with open(path, "rb") as handle:
            header = json.loads(handle.readline())
            payload = handle.read()
        if zlib.crc32(payload) != header["crc32"] or len(payload) != header["length"]:
            raise ValueError(f"{path.name}: payload does not match its header")
        if header["kind"] not in KINDS:
            raise ValueError(f"{path.name}: unknown kind")
        return Entry(id=header["id"], kind=header["kind"], seq=int(header["seq"]), queued=float(header["queued"]),
                     size=path.stat().st_size, path=path, meta=dict(header.get("meta") or {}))

    # ------------------------------------------------------------------ use

    def put(self, payload: bytes, kind: str = HARD, meta: Optional[dict] = None, entry_id: Optional[str] = None
            ) -> Entry:
        """Durably queue one image's exact form. -> its entry (`entry.id` is what the client is given)."""
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r}: one of {KINDS}")
        entry_id = entry_id or new_id()
        with self._lock:
            self._seq += 1
            seq = self._seq
        header = {"id": entry_id, "kind": kind, "seq": seq, "queued": self._clock(), "length": len(payload),
                  "crc32": zlib.crc32(payload), "meta": meta or {}}
        path = self.folder / f"{seq:012d}-{kind}-{entry_id}{SUFFIX}"
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as handle:
            handle.write(json.dumps(header).encode() + b"\n")
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        self._sync_folder()
        entry = Entry(entry_id, kind, seq, header["queued"], path.stat().st_size, path, header["meta"])
        with self._lock:
            self._entries[entry_id] = entry
            self._bytes += entry.size
        self.expire()
        return entry

    def payload(self, entry: Entry) -> Optional[bytes]:
        """The entry's exact form, read from disk; None when it is gone (settled or evicted meanwhile)."""
        try:
            with open(entry.path, "rb") as handle:
                handle.readline()
                return handle.read()
        except FileNotFoundError:
            return None

    def remove(self, entry_id: str) -> bool:
        """Settled (or refused for good): the entry leaves the outbox. -> False when it was not there."""
        with self._lock:
            entry = self._entries.pop(entry_id, None)
            if entry is not None:
                self._bytes -= entry.size
        if entry is None:
            return False
        entry.path.unlink(missing_ok=True)
        self._sync_folder()
        return True

    def expire(self) -> int:
        """Evict the oldest entries while over the byte budget or past the age budget. -> how many went."""
        gone = []
        with self._lock:
            oldest_allowed = self._clock() - self.max_age_s
            for entry in list(self._entries.values()):
                if self._bytes <= self.max_bytes and entry.queued >= oldest_allowed:
                    break
                del self._entries[entry.id]
                self._bytes -= entry.size
                gone.append(entry)
            self.evicted += len(gone)
        for entry in gone:
            entry.path.unlink(missing_ok=True)
            self._on_evict(entry)
        if gone:
            self._sync_folder()
            log.warning("outbox %s: %d entr%s evicted (over %s bytes or older than %g s; %d evicted in all)",
                        self.folder, len(gone), "y" if len(gone) == 1 else "ies", f"{self.max_bytes:,}",
                        self.max_age_s, self.evicted)
        return len(gone)

    def entries(self) -> List[Entry]:
        """Oldest first."""
        with self._lock:
            return list(self._entries.values())

    def __contains__(self, entry_id: str) -> bool:
        return entry_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries())

    @property
    def bytes(self) -> int:
        return self._bytes

    def _sync_folder(self) -> None:
        """A rename or unlink is durable only once the folder itself is fsynced."""
        descriptor = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
