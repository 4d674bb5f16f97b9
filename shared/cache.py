"""Where the project keeps what it builds or downloads: the stand-in model, its data, TF Hub downloads."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Callable

from .spec import SPEC_FILE

STANDIN_VERSION = "standin-v2"  # bump when the stand-in's data or training changes (v2: the "fast" recipe, issue 15)


def cache_dir() -> Path:
    root = os.environ.get("CASSAVA_CACHE") or Path.home() / ".cache" / "cassava"
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def standin_dir() -> Path:
    return cache_dir() / STANDIN_VERSION


def standin_model_dir() -> Path:
    return standin_dir() / "saved_model"


def standin_data_dir(split: str = "validation") -> Path:
    return standin_dir() / "data" / split


@contextlib.contextmanager
def build_lock(name: str):
    """Serialise builds of the same artefact across processes (tests, demo and servers may race)."""
    path = cache_dir() / f".{name}.lock"
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def built_once(target: Path, lock: str, build: Callable[[Path], object], announce: str,
               ready: Callable[[Path], str], marker: str = SPEC_FILE) -> Path:
    """The model folder `target`, built by `build(folder)` on first use and cached after. Built under a lock
    (tests, demo and servers may race) into a staging folder that is renamed into place, so a half-built model is
    never seen; complete when it holds `marker` (cassava-model.json). `announce` and `ready(target)` are printed
    around it."""
    if (target / marker).is_file():
        return target
    with build_lock(lock):
        if (target / marker).is_file():
            return target
        print(announce, flush=True)
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        build(staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        print(ready(target), flush=True)
    return target
