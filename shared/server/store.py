"""A model store: numbered version folders under one base path, TensorFlow Serving's layout.

  STORE/1/  STORE/2/  ...        each a model folder (`cassava convert` output for the edge, a SavedModel for the
                                 cloud); names that are not all digits (`.3.tmp`, `3.partial`) are ignored, so a new
                                 version is written under a temporary name and renamed into place
  STORE/cassava-rollback.json    {"excluded": [3]}: versions `cassava models rollback` took out of service

The version that serves is the highest one that is not excluded and passes verification (shared/manifest.py). The
server checks the store every WATCH_INTERVAL_S seconds (model-settings `extra.store_interval_s`, at most 10): a newer
version is loaded and verified beside the serving one, then takes new requests; a removed or excluded serving
version gives way to the next lower verified one. A refused version is not retried until its files change.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from prometheus_client import REGISTRY, Counter, Gauge

from ..errors import CassavaError
from ..manifest import Refusal, load_verified
from ..spec import TFLITE_FILE

log = logging.getLogger("cassava.store")

ROLLBACK_FILE = "cassava-rollback.json"
WATCH_INTERVAL_S = 5.0
MAX_INTERVAL_S = 10.0
SETTLE_S = 2.0  # a version whose files changed this recently may still be being copied: look again next time

_METRICS = {}


def metrics():
    """Created on first use, as runtime._metrics (prometheus' multi-process mode is set up by MLServer first)."""
    if not _METRICS:
        _METRICS["version"] = Gauge("cassava_model_version", "Store version serving (0: not from a store)",
                                    ["model_name", "tier"], multiprocess_mode="liveall", registry=REGISTRY)
        _METRICS["refusals"] = Counter("cassava_model_refusals", "Store versions refused before serving, by reason",
                                       ["model_name", "tier", "reason"], registry=REGISTRY)
    return _METRICS


def versions(store) -> List[int]:
    """The store's version numbers, ascending."""
    store = Path(store)
    if not store.is_dir():
        return []
    return sorted(int(p.name) for p in store.iterdir() if p.name.isdigit() and p.is_dir())


def is_store(path) -> bool:
    """A folder that is not itself a model and holds at least one numbered version folder."""
    path = Path(path)
    return path.is_dir() and not (path / TFLITE_FILE).exists() and not (path / "saved_model.pb").exists() \
        and bool(versions(path))


def excluded(store) -> set:
    path = Path(store) / ROLLBACK_FILE
    if not path.is_file():
        return set()
    try:
        return {int(v) for v in json.loads(path.read_text()).get("excluded", [])}
    except (ValueError, TypeError, AttributeError) as exc:
        raise CassavaError(f"{path}: not a valid rollback file ({exc})") from None


def write_excluded(store, versions_out) -> None:
    path = Path(store) / ROLLBACK_FILE
    if not versions_out:
        path.unlink(missing_ok=True)
        return
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps({"excluded": sorted(versions_out)}) + "\n")
    temporary.replace(path)  # a watcher never reads half a file


def candidates(store) -> List[int]:
    """Versions that may serve, newest first."""
    out = excluded(store)
    return [v for v in reversed(versions(store)) if v not in out]


def signature(folder: Path) -> tuple:
    """Names, sizes and modification times of a version's files: a refused version is retried when this changes."""
    return tuple((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                 for p in sorted(folder.rglob("*")) if p.is_file())


def settled(folder: Path, now: Optional[float] = None) -> bool:
    times = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()] or [folder.stat().st_mtime]
    return (now or time.time()) - max(times) >= SETTLE_S


class StoreWatcher:
    """Decides which version serves. `load(folder) -> classifier` is the tier's loader; loading and verifying run in
    a thread (they block), the swap itself in the runtime's event loop (`activate`)."""

    def __init__(self, store, load: Callable, interval: float = WATCH_INTERVAL_S, allow_spec_change: bool = False,
                 model_name: str = "cassava", tier: str = "?"):
        self.store = Path(store)
        self.load = load
        self.interval = min(float(interval), MAX_INTERVAL_S)
        self.allow_spec_change = allow_spec_change
        self.model_name, self.tier = model_name, tier
        self.serving: Optional[int] = None
        self.spec = None  # what the serving version's clients were given
        self._refused = {}  # version -> (signature, Refusal)
        self._gone_warned = None
        self._task = None

    def first(self) -> Tuple[int, object]:
        """The version to start with (blocking): the highest verified one; CassavaError when none is."""
        found = self.next_version()
        if found is None:
            reasons = "; ".join(f"{v}: {r}" for v, (_, r) in sorted(self._refused.items(), reverse=True))
            raise CassavaError(f"model store {self.store}: no version passes verification ({reasons or 'none'})")
        return found

    def next_version(self) -> Optional[Tuple[int, object]]:
        """(version, its verified classifier) when another version should serve now, else None (blocking)."""
        order = candidates(self.store)
        for version in order:
            if version == self.serving:
                return None
            folder = self.store / str(version)
            if self.serving is not None and not settled(folder):
                return None  # still being written: keep serving, look again next time
            mark = signature(folder)
            if version in self._refused and self._refused[version][0] == mark:
                continue
            started = time.perf_counter()
            classifier, refusal = load_verified(folder, self.load, self.spec, self.allow_spec_change)
            if refusal is None:
                self._refused.pop(version, None)
                log.info("model %s: store version %s loaded and verified in %.2f s", self.model_name, version,
                         time.perf_counter() - started)
                return version, classifier
            self.refuse(version, mark, refusal)
        if self.serving is not None and self._gone_warned != self.serving:
            self._gone_warned = self.serving
            log.warning("model %s: version %s was removed or rolled back but no other version verifies: it keeps "
                        "serving from memory", self.model_name, self.serving)
        return None

    def refuse(self, version: int, mark: tuple, refusal: Refusal) -> None:
        self._refused[version] = (mark, refusal)
        metrics()["refusals"].labels(self.model_name, self.tier, refusal.reason).inc()
        serving = f"version {self.serving} keeps serving" if self.serving is not None else "not serving yet"
        log.warning("model %s: store version %s refused (%s); %s", self.model_name, version, refusal, serving)

    def served(self, version: int, spec) -> None:
        self.serving, self.spec = version, spec
        metrics()["version"].labels(self.model_name, self.tier).set(version)

    def start(self, activate: Callable) -> None:
        """Watch in the running event loop; `await activate(version, classifier)` swaps a verified version in."""
        self._task = asyncio.get_running_loop().create_task(self._watch(activate))

    async def _watch(self, activate: Callable) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                found = await asyncio.to_thread(self.next_version)
                if found is not None:
                    await activate(*found)
            except asyncio.CancelledError:
                raise
            except Exception:  # the store being edited under us (a folder vanishing mid-scan): try again next time
                log.exception("model %s: checking store %s failed; serving version %s stays", self.model_name,
                              self.store, self.serving)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


def verification(store, load: Callable = None, allow_spec_change: bool = False) -> dict:
    """version -> None (verified) or its Refusal, as a server watching the store since version 1 sees them: each
    version's spec is checked against the version below it that verified. Loads every version (blocking)."""
    states, spec = {}, None
    for version in versions(store):
        classifier, refusal = load_verified(Path(store) / str(version), load, spec, allow_spec_change)
        states[version] = refusal
        if classifier is not None:
            spec = classifier.spec
    return states


def serving(store, states: dict) -> Optional[int]:
    """The version a server watching the store serves, given `verification(store)`."""
    return next((v for v in candidates(store) if states.get(v, True) is None), None)


def rollback(store, states: Optional[dict] = None) -> int:
    """Exclude the version that serves (`states`: verification(store); None: the newest not excluded);
    -> the version excluded. Another candidate must remain to serve."""
    order = candidates(store)
    if states is not None:
        order = [v for v in order if states.get(v, True) is None]
    if len(order) < 2:
        raise CassavaError(f"model store {store}: nothing to roll back to ({len(order)} verified version(s) in "
                           "service)")
    write_excluded(store, excluded(store) | {order[0]})
    return order[0]


def restore(store, version: Optional[int] = None) -> set:
    """Undo rollbacks: one version, or all. -> the versions still excluded."""
    left = set() if version is None else excluded(store) - {int(version)}
    write_excluded(store, left)
    return left
