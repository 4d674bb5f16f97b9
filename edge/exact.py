"""An image's exact form for the cloud: what lets the cloud judge the very pixels the edge judged, in few bytes.

Per image the smaller of its original file (the cloud's shared preprocessing decodes it to these very pixels) and
the pixels as lossless WebP; raw pixels on the `binary` wire; FP32 floats when the model input was not made from
8-bit pixels. `cloud_request` puts forms of one family back into one V2 request.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest

from cassava.shared.preprocess import to_model_input
from cassava.shared.protocol import FLOAT_INPUT, PHOTOS_INPUT
from cassava.shared.protocol.images import BadPayload, ImagePayloadCodec
from cassava.shared.protocol.v2 import build_request, photos_input

ORIGINAL, LOSSLESS, PIXELS, FLOAT = "original", "lossless", "pixels", "float"
FAMILY = {ORIGINAL: "photos", LOSSLESS: "photos", PIXELS: PIXELS, FLOAT: FLOAT}


def exact_pixels(x: np.ndarray, input_scale: float) -> Optional[np.ndarray]:
    """Model input -> the uint8 pixels it was made from, or None when it was not made from 8-bit pixels (a
    `payload` of arbitrary floats), in which case only the floats themselves are exact."""
    pixels = np.clip(np.rint(x * np.float32(255.0 / input_scale)), 0, 255).astype(np.uint8)
    return pixels if np.array_equal(to_model_input(pixels, input_scale), x) else None


def original_photos(request_input) -> Optional[List[bytes]]:
    """The encoded files of a `photos` request (what the cloud can decode to the edge's very pixels), else None."""
    if request_input.name != PHOTOS_INPUT or request_input.datatype != "BYTES":
        return None
    try:
        return ImagePayloadCodec.decode_input(request_input)
    except BadPayload:
        return None


def exact_forms(x: np.ndarray, input_scale: float, wire: str = "compact",
                originals: Optional[Sequence[bytes]] = None) -> List[Tuple[str, bytes]]:
    """Model inputs [N, H, W, 3] -> [(form, bytes)] per image (see the module's docstring)."""
    pixels = exact_pixels(x, input_scale)
    if pixels is None:
        return [(FLOAT, np.ascontiguousarray(image, dtype=np.float32).tobytes()) for image in x]
    if wire == "binary":
        return [(PIXELS, np.ascontiguousarray(image).tobytes()) for image in pixels]
    forms = []
    for i, image in enumerate(pixels):
        lossless = ImagePayloadCodec.compact(image)
        if originals is not None and len(originals[i]) <= len(lossless):
            forms.append((ORIGINAL, originals[i]))
        else:
            forms.append((LOSSLESS, lossless))
    return forms


def cloud_request(forms: Sequence[Tuple[str, bytes]], input_size: int, request_id: Optional[str] = None
                  ) -> InferenceRequest:
    """Forms of one family (photos, pixels or floats) -> one V2 request for the cloud."""
    families = {FAMILY[form] for form, _ in forms}
    if len(families) != 1:
        raise ValueError(f"one request carries one family of exact forms, not {sorted(families)}")
    family, shape = families.pop(), (len(forms), input_size, input_size, 3)
    if family == "photos":
        request = InferenceRequest(inputs=[photos_input([data for _, data in forms])])
    elif family == PIXELS:
        pixels = np.frombuffer(b"".join(data for _, data in forms), dtype=np.uint8).reshape(shape)
        request = build_request("binary", pixels=pixels)
    else:
        floats = np.frombuffer(b"".join(data for _, data in forms), dtype=np.float32).reshape(shape)
        request = InferenceRequest(inputs=[NumpyCodec.encode_input(FLOAT_INPUT, np.ascontiguousarray(floats))])
    request.id = request_id
    return request
