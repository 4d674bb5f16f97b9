"""How many pixels a server decodes: per image, per request, and at once. Read from image headers, before decoding.

An encoded image says little about its cost: a 160 KB PNG of one colour can declare 7000x7000 pixels, which Pillow
holds as 4 bytes each (196 MB) while decoding. So the cost of a request is counted in decoded pixels:
  image     pixels one image may declare: 8192x8192, above every 12-64 MP phone sensor (64 MP: 9248x6936)
  request   pixels one request may declare in all: 256 Mi, e.g. 21 photos of 12 MP or 5 of 50 MP
  decoding  pixels being decoded at once across all requests: 64 Mi, about 256 MB of Pillow buffers at most,
            what a 1 GB Raspberry Pi can spare beside the edge server's ~220 MB (on a 512 MB Pi Zero 2: 32 Mi)
The first two are refused with 413 and the numbers; the third makes decodes wait their turn (PixelGate).
Settable in model-settings.json `parameters.extra` (max_image_pixels, max_request_pixels, max_decoding_pixels).
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Sequence, Tuple

from .errors import BadImage, CassavaError

DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192
DEFAULT_MAX_REQUEST_PIXELS = 256 * 1024 * 1024
DEFAULT_MAX_DECODING_PIXELS = 64 * 1024 * 1024


class TooManyPixels(BadImage):
    """An image or a request declares more pixels than the limit: HTTP 413 / gRPC RESOURCE_EXHAUSTED."""

    status = 413


@dataclass(frozen=True)
class PixelLimits:
    image: int = DEFAULT_MAX_IMAGE_PIXELS
    request: int = DEFAULT_MAX_REQUEST_PIXELS
    decoding: int = DEFAULT_MAX_DECODING_PIXELS

    def __post_init__(self):
        for name in ("image", "request", "decoding"):
            if int(getattr(self, name)) < 1:
                raise CassavaError(f"max_{name}_pixels must be at least 1, not {getattr(self, name)}")
        if self.decoding < self.image:  # else an image under the per-image limit could never be decoded
            raise CassavaError(f"max_decoding_pixels ({self.decoding:,}) must be at least max_image_pixels "
                               f"({self.image:,})")

    @classmethod
    def from_extra(cls, extra: dict) -> "PixelLimits":
        """From model-settings.json `parameters.extra`; absent keys keep the defaults."""
        return cls(image=int(extra.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)),
                   request=int(extra.get("max_request_pixels", DEFAULT_MAX_REQUEST_PIXELS)),
                   decoding=int(extra.get("max_decoding_pixels", DEFAULT_MAX_DECODING_PIXELS)))


def check_image(size: Tuple[int, int], limit: int, where: str) -> int:
    """-> the pixels `size` (width, height) declares; TooManyPixels above `limit`."""
    width, height = size
    pixels = int(width) * int(height)
    if pixels > limit:
        raise TooManyPixels(f"{where}: {width}x{height} = {pixels:,} pixels is above the limit of {limit:,} pixels "
                            "per image")
    return pixels


def check_request(sizes: Sequence[Tuple[int, int]], limits: PixelLimits, name: str) -> int:
    """Every image under the per-image limit and their sum under the per-request limit. -> the sum."""
    total = sum(check_image(size, limits.image, f"input {name!r}[{index}]") for index, size in enumerate(sizes))
    if total > limits.request:
        largest = max(sizes, key=lambda s: s[0] * s[1])
        raise TooManyPixels(f"input {name!r}: {len(sizes)} images declare {total:,} pixels in all, above the limit "
                            f"of {limits.request:,} pixels per request (the largest is {largest[0]}x{largest[1]}); "
                            "send fewer or smaller images per request")
    return total


class PixelGate:
    """An asyncio semaphore counted in pixels: a decode waits until its pixels fit beside those being decoded.

    Not first-in-first-out: a small photo that fits goes ahead of a large one waiting for room, so everyday requests
    are not queued behind a burst of huge ones (a large one goes as soon as the decodes in flight leave it room).
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.in_use = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int):
        pixels = min(int(pixels), self.capacity)  # the caller checked the per-image limit; never wait forever
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_use + pixels <= self.capacity)
            self.in_use += pixels
        try:
            yield
        finally:
            async with self._changed:
                self.in_use -= pixels
                self._changed.notify_all()
