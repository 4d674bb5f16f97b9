"""The one preprocessing path: any JPEG/PNG/array -> RGB -> resize to the model's size -> uint8 pixels.

Float conversion happens last, per the model spec (`to_model_input`). The resize reproduces the CropNet
tutorial's `tf.image.resize` (bilinear, half-pixel centres, no antialias) in numpy, so the client and the edge
need no TensorFlow and get the same pixels as the tutorial (within 1/255, from rounding to uint8).

A large photo costs little beyond Pillow's own buffer: that bilinear resize reads at most two source rows and
columns per output pixel, so only those are taken out of Pillow, in uint8, before any float maths. The size comes
from the header and is checked against a per-image limit before anything is decoded (budget.py).
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from .budget import DEFAULT_MAX_IMAGE_PIXELS, check_image
from .errors import BadImage

MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS
# Pillow's own bomb guard is replaced by ours: every image here is opened by `_opened` (the project's only
# Image.open), which checks the header's size against the per-image limit (budget.py) and says the numbers, where
# Pillow's would refuse before the size is known, and at a limit of its own.
Image.MAX_IMAGE_PIXELS = None
# Above this many pixels the rows the resize needs are taken out of Pillow one by one instead of copying the whole
# image into numpy (3 more bytes per pixel); below it one copy is faster.
ROWS_ABOVE = 1 << 22
# `draft` (opt-in, server setting `jpeg_draft`): a JPEG at least twice this multiple of the model's input on each
# side is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's own downscaling), never below this multiple.
# 3x faster for a 12 MP photo, but not the tutorial's pixels: on the 327 real photos upscaled to 12 MP the real
# model's top-1 changed on 21 (benchmarks/bench_budget.py), so the exact path stays the default everywhere.
DRAFT_FACTOR = 2


def decode_image(source, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode a path, encoded bytes, a PIL image or an array into an RGB uint8 array [H, W, 3]."""
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, Image.Image):
        return np.asarray(source.convert("RGB"))
    data, where = _encoded(source)
    with _opened(data, where, max_pixels) as img:
        return np.asarray(_rgb(img))


def image_size(source, max_pixels: int = MAX_IMAGE_PIXELS, draft_size: Optional[int] = None) -> Tuple[int, int, int]:
    """From the header alone: (width, height, pixels that decoding will fill: fewer for a drafted JPEG)."""
    data, where = _encoded(source)
    with _opened(data, where, max_pixels) as img:
        width, height = img.size
        if draft_size:
            _draft(img, draft_size)
        return width, height, img.size[0] * img.size[1]


def _encoded(source) -> Tuple[bytes, str]:
    if isinstance(source, (str, Path)):
        try:
            return Path(source).read_bytes(), str(source)
        except OSError as exc:
            raise BadImage(f"{source}: cannot read ({exc.strerror or exc})") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "image bytes"
    raise BadImage(f"cannot decode an image from {type(source).__name__}")


@contextlib.contextmanager
def _opened(data: bytes, where: str, max_pixels: int):
    """An opened (not yet decoded) image whose header passed the per-image limit; every failure a BadImage."""
    if not data:
        raise BadImage(f"{where}: empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            check_image(img.size, max_pixels, where)
            yield img
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(f"{where}: not an image (expected JPEG or PNG)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"{where}: corrupt image ({exc})") from None


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def _draft(img: Image.Image, size: int) -> None:
    if img.format == "JPEG" and min(img.size) >= 2 * DRAFT_FACTOR * size:
        img.draft("RGB", (DRAFT_FACTOR * size, DRAFT_FACTOR * size))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise BadImage(f"image array must be [H, W, 3], got shape {list(array.shape)}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    array = array[..., :3]
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and float(np.nanmax(array)) <= 1.0:
            array = array * 255.0  # float images in [0, 1]
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return array


def _axis_weights(in_size: int, out_size: int):
    """Source indices and weights of TF's bilinear resize with half-pixel centres (no antialias)."""
    scale = in_size / out_size
    centres = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    floor = np.floor(centres)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(centres), in_size - 1).astype(np.int64)
    frac = (centres - floor).astype(np.float32)
    return lower, upper, frac


def _used(lower, upper):
    """The source indices the resize reads, and `lower`/`upper` renumbered into them."""
    used = np.unique(np.concatenate([lower, upper]))
    return used, np.searchsorted(used, lower), np.searchsorted(used, upper)


def _resize(take_rows, height: int, width: int, size: int) -> np.ndarray:
    """The bilinear resize on the rows `take_rows(indices)` returns ([k, width, C]): only those, as float32."""
    rows, rows_lo, rows_hi = _used(*_axis_weights(height, size)[:2])
    cols, cols_lo, cols_hi = _used(*_axis_weights(width, size)[:2])
    row_frac, col_frac = _axis_weights(height, size)[2], _axis_weights(width, size)[2]
    src = take_rows(rows)[:, cols].astype(np.float32)
    top = src[rows_lo]
    rows = top + (src[rows_hi] - top) * row_frac[:, None, None]
    left = rows[:, cols_lo]
    return left + (rows[:, cols_hi] - left) * col_frac[None, :, None]


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Resize [H, W, C] to [size, size, C] as float32, matching `tf.image.resize(..., 'bilinear')`."""
    return _resize(lambda rows: image[rows], image.shape[0], image.shape[1], size)


def _image_rows(img: Image.Image):
    width = img.size[0]

    def take_rows(rows) -> np.ndarray:
        out = np.empty((len(rows), width, 3), np.uint8)
        for i, row in enumerate(rows):  # converted row by row: RGB conversion is per pixel, so the same pixels
            out[i] = np.asarray(_rgb(img.crop((0, int(row), width, int(row) + 1))))[0]
        return out

    return take_rows


def _to_uint8(resized: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def preprocess(source, size: int, max_pixels: int = MAX_IMAGE_PIXELS, draft: bool = False) -> np.ndarray:
    """Image -> uint8 RGB pixels [size, size, 3]: what goes on the wire and into every model.

    `max_pixels`: the per-image limit, checked from the header (TooManyPixels). `draft`: decode a JPEG far larger
    than `size` at a reduced DCT scale (faster, less memory, not the tutorial's exact pixels)."""
    if isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        data, where = _encoded(source)
        with _opened(data, where, max_pixels) as img:
            if draft:
                _draft(img, size)
            img.load()  # a corrupt file fails here, inside _opened: a BadImage
            width, height = img.size
            if width * height > ROWS_ABOVE:
                return _to_uint8(_resize(_image_rows(img), height, width, size))
            rgb = np.asarray(_rgb(img))
    else:
        rgb = decode_image(source)
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return np.ascontiguousarray(rgb)
    return _to_uint8(resize_bilinear(rgb, size))


def to_model_input(pixels: np.ndarray, input_scale: float) -> np.ndarray:
    """uint8 pixels [N, H, W, 3] -> float32 in the model's range ([0, 1] or [0, 255])."""
    x = pixels.astype(np.float32)
    return x / np.float32(255.0) if input_scale == 1.0 else x


def pixel_range_ok(x: np.ndarray, input_scale: float) -> bool:
    """True when float input is finite and inside [0, input_scale] (a little slack for rounding)."""
    if not np.all(np.isfinite(x)):
        return False
    return float(x.min(initial=0.0)) >= -1e-3 and float(x.max(initial=0.0)) <= input_scale * 1.001 + 1e-3
