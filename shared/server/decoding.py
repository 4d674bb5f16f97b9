"""The runtime's decode stage: photos decoded within a pixel budget, memory handed back after large ones.

A photos request is checked from its headers first (per-image and per-request limits, 413 before any decoding), then
each image waits for room in the server-wide PixelGate and is decoded in a worker thread. Waiting happens on the
event loop, not in a thread, so a burst of large images cannot take every worker thread from everyday requests.

Memory: glibc raises its mmap threshold to the largest block freed (up to 32 MB), so after one large decode
Pillow's 16 MB blocks come from the heap, whose freed space the process keeps (the issue's 611 MB after a burst).
A fixed threshold keeps blocks of 1 MiB and up in mmap, which free() returns to the system at once, and
malloc_trim after a large decode gives back what the heap still holds. What was tried and measured: the README's
Reliability section (benchmarks/bench_budget.py: fixed threshold 1.05x of steady RSS after a burst, malloc_trim
alone 1.31x, neither 3.26x, both 1.03x).
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from mlserver.types import RequestInput

from ..budget import PixelGate, PixelLimits
from ..preprocess import to_model_input
from ..protocol.images import BadPayload, ImagePayloadCodec
from ..protocol.v2 import BadRequest, decode_input, photo_files
from ..spec import ModelSpec

M_MMAP_THRESHOLD = -3  # mallopt's parameter numbers, from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20
LARGE_PIXELS = 1 << 22  # a decode this large (16 MB of Pillow buffers and up): low priority, then malloc_trim
LARGE_NICENESS = 10

_libc = None


def _glibc():
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            _libc = libc if libc is not None and hasattr(libc, "malloc_trim") else False
        except OSError:
            _libc = False
    return _libc


def keep_large_blocks_in_mmap() -> bool:
    """Fix glibc's mmap threshold (no-op elsewhere: musl, macOS). True when set."""
    libc = _glibc()
    return bool(libc) and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1


def _lower_priority() -> None:
    """Run this thread at a lower CPU priority (Linux: setpriority on a thread id affects that thread only)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LARGE_NICENESS)
    except (AttributeError, OSError):
        pass


def release_memory() -> None:
    """Hand the heap's free pages back to the system (glibc only)."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)


class PhotoDecoder:
    """Decodes a checked request input into model input, photos within `limits` (draft: see preprocess)."""

    def __init__(self, limits: PixelLimits = PixelLimits(), draft: bool = False):
        self.limits = limits
        self.draft = draft
        self.gate = PixelGate(limits.decoding)
        # Large decodes run in their own low-priority threads: where cores are short (a Pi, or this 2-core VM), the
        # scheduler gives everyday photos the CPU first, and a burst of huge photos only waits longer itself.
        self._large = ThreadPoolExecutor(2, thread_name_prefix="cassava-large-decode", initializer=_lower_priority)

    @classmethod
    def from_extra(cls, extra: dict) -> "PhotoDecoder":
        draft = extra.get("jpeg_draft", False)
        return cls(PixelLimits.from_extra(extra), draft if isinstance(draft, bool) else str(draft).lower() == "true")

    async def decode(self, request_input: RequestInput, spec: ModelSpec) -> np.ndarray:
        """-> float32 [N, H, W, 3] in the model's pixel range (BadRequest: 4xx with a message)."""
        files, costs, x = await asyncio.to_thread(self._prepare, request_input, spec)
        if x is not None:
            return x
        name, size = request_input.name, spec.input_size
        pixels = []
        loop = asyncio.get_running_loop()
        for index, (photo, cost) in enumerate(zip(files, costs)):
            async with self.gate.hold(cost):
                executor = self._large if cost >= LARGE_PIXELS else None  # None: the loop's default threads
                pixels.append(await loop.run_in_executor(executor, self._decode_one, photo, cost, size,
                                                         f"input {name!r}[{index}]"))
        return to_model_input(np.stack(pixels), spec.input_scale)

    def close(self) -> None:
        self._large.shutdown(wait=False, cancel_futures=True)

    def _prepare(self, request_input: RequestInput, spec: ModelSpec):
        """-> (files, decode costs, None) for photos, checked from their headers; (None, None, x) for tensors."""
        files = photo_files(request_input)
        if files is None:
            return None, None, decode_input(request_input, spec)
        try:
            costs = ImagePayloadCodec.decode_costs(files, spec.input_size, request_input.name, self.limits,
                                                   self.draft)
        except BadPayload as exc:
            raise BadRequest(str(exc), exc.status) from None
        return files, costs, None

    def _decode_one(self, photo: bytes, cost: int, size: int, where: str) -> np.ndarray:
        try:
            return ImagePayloadCodec.to_pixel(photo, size, where, self.limits, self.draft)
        except BadPayload as exc:
            raise BadRequest(str(exc), exc.status) from None
        finally:
            if cost >= LARGE_PIXELS:
                release_memory()
