"""The one preprocessing path: any JPEG/PNG/array -> RGB -> resize to the model's size -> uint8 pixels.

Float conversion happens last, per the model spec (`to_model_input`). The resize reproduces the CropNet
tutorial's `tf.image.resize` (bilinear, half-pixel centres, no antialias) in numpy, so the client and the edge
need no TensorFlow and get the same pixels as the tutorial (within 1/255, from rounding to uint8).
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import BadImage

# Pillow's own bomb guard warns at 89 MP and fails at twice that; set it deliberately lower: 50 MP is well
# above any phone photo, and a 20000x20000 PNG (400 MP of RAM) is refused before its pixels are decoded.
MAX_IMAGE_PIXELS = 50_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def decode_image(source) -> np.ndarray:
    """Decode a path, encoded bytes, a PIL image or an array into an RGB uint8 array [H, W, 3]."""
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source)
    if isinstance(source, Image.Image):
        return np.asarray(source.convert("RGB"))
    if isinstance(source, (str, Path)):
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise BadImage(f"{source}: cannot read ({exc.strerror or exc})") from None
        return _decode_bytes(data, str(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(source), "image bytes")
    raise BadImage(f"cannot decode an image from {type(source).__name__}")


def _decode_bytes(data: bytes, where: str) -> np.ndarray:
    if not data:
        raise BadImage(f"{where}: empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise BadImage(f"{where}: {width}x{height} pixels is above the {MAX_IMAGE_PIXELS:,}-pixel limit")
                return np.asarray(img.convert("RGB"))
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"{where}: refused, too many pixels ({exc})") from None
    except UnidentifiedImageError:
        raise BadImage(f"{where}: not an image (expected JPEG or PNG)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"{where}: corrupt image ({exc})") from None


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


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """Resize [H, W, C] to [size, size, C] as float32, matching `tf.image.resize(..., 'bilinear')`."""
    src = image.astype(np.float32)
    rows_lo, rows_hi, row_frac = _axis_weights(src.shape[0], size)
    cols_lo, cols_hi, col_frac = _axis_weights(src.shape[1], size)
    top = src[rows_lo]
    rows = top + (src[rows_hi] - top) * row_frac[:, None, None]
    left = rows[:, cols_lo]
    return left + (rows[:, cols_hi] - left) * col_frac[None, :, None]


def preprocess(source, size: int) -> np.ndarray:
    """Image -> uint8 RGB pixels [size, size, 3]: what goes on the wire and into every model."""
    rgb = decode_image(source)
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return np.ascontiguousarray(rgb)
    return np.clip(np.rint(resize_bilinear(rgb, size)), 0, 255).astype(np.uint8)


def to_model_input(pixels: np.ndarray, input_scale: float) -> np.ndarray:
    """uint8 pixels [N, H, W, 3] -> float32 in the model's range ([0, 1] or [0, 255])."""
    x = pixels.astype(np.float32)
    return x / np.float32(255.0) if input_scale == 1.0 else x


def pixel_range_ok(x: np.ndarray, input_scale: float) -> bool:
    """True when float input is finite and inside [0, input_scale] (a little slack for rounding)."""
    if not np.all(np.isfinite(x)):
        return False
    return float(x.min(initial=0.0)) >= -1e-3 and float(x.max(initial=0.0)) <= input_scale * 1.001 + 1e-3
