"""Request decoding in-process (protocol/v2.py + images.py): each input kind to the same model input, and each
kind of bad request to a BadRequest with its status and message, without a server."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from mlserver.types import InferenceRequest, RequestInput
from PIL import Image

from cassava.shared.protocol.images import ImagePayloadCodec
from cassava.shared.protocol.v2 import BadRequest, build_request, request_to_model_input
from cassava.shared.spec import ModelSpec

SPEC = ModelSpec(input_size=16)


def _pixels(n=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize("wire", ["compact", "uint8", "float32"])
@pytest.mark.parametrize("grpc", [False, True])
def test_every_wire_format_decodes_to_the_same_model_input(wire, grpc):
    pixels = _pixels()
    request = build_request(wire, pixels=pixels, grpc=grpc)
    received = request if grpc else InferenceRequest.model_validate_json(request.model_dump_json())
    x = request_to_model_input(received, SPEC)
    assert x.dtype == np.float32 and x.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(x, pixels / 255.0, atol=1e-6)  # lossless: the very pixels the client computed


def test_the_codec_owns_both_directions_of_a_photo():
    photos = [ImagePayloadCodec.compact(p) for p in _pixels(3)]
    for use_bytes in (True, False):
        request_input = ImagePayloadCodec.encode_input("photos", photos, use_bytes=use_bytes)
        assert ImagePayloadCodec.decode_input(request_input) == photos
    assert ImagePayloadCodec.can_encode(photos) and not ImagePayloadCodec.can_encode("not photos")


def test_a_photo_of_any_size_is_resized_by_the_shared_preprocessing():
    from cassava.shared.preprocess import preprocess

    buffer = io.BytesIO()
    Image.fromarray(_pixels(1, seed=3)[0].repeat(5, axis=0).repeat(7, axis=1)).save(buffer, format="PNG")
    request = build_request("photo", photos=[buffer.getvalue()])
    x = request_to_model_input(request, SPEC)
    np.testing.assert_allclose(x[0], preprocess(buffer.getvalue(), 16) / 255.0, atol=1e-6)


def _input(name, datatype, shape, data, content_type=None):
    parameters = {"content_type": content_type} if content_type else None
    return RequestInput(name=name, datatype=datatype, shape=shape, data=data, parameters=parameters)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


BAD = [
    ("two inputs", [_input("pixels", "UINT8", [1, 16, 16, 3], [0] * 768)] * 2, 400, "exactly one input"),
    ("wrong rank", [_input("pixels", "UINT8", [16, 16, 3], [0] * 768)], 400, "expected rank 4"),
    ("wrong size", [_input("pixels", "UINT8", [1, 8, 8, 3], [0] * 192)], 400, "expected images of [16, 16, 3]"),
    ("empty batch", [_input("pixels", "UINT8", [0, 16, 16, 3], [])], 400, "empty batch"),
    ("above the limit", [_input("photos", "BYTES", [65], ["x"] * 65)], 413, "limit of 64"),
    ("wrong datatype", [_input("payload", "INT32", [1, 16, 16, 3], [0] * 768)], 400, "datatype must be FP32"),
    ("out of range", [_input("payload", "FP32", [1, 16, 16, 3], [2.0] * 768)], 400, "values outside [0, 1]"),
    ("too few values", [_input("pixels", "UINT8", [1, 16, 16, 3], [0] * 10)], 400, "does not match shape"),
    ("count mismatch", [_input("photos", "BYTES", [2], [_b64(b"x")], "base64")], 400, "shape says 2 images but 1"),
    ("not base64", [_input("photos", "BYTES", [1], ["***"], "base64")], 400, "not valid base64"),
    ("not an image", [_input("photos", "BYTES", [1], [_b64(b"%PDF-1.4")], "base64")], 400, "not an image"),
    ("unknown input", [_input("image", "UINT8", [1, 16, 16, 3], [0] * 768)], 400, "unknown input 'image'"),
]


@pytest.mark.parametrize("inputs, status, message", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_requests_are_a_bad_request_with_status_and_message(inputs, status, message):
    with pytest.raises(BadRequest) as caught:
        request_to_model_input(InferenceRequest(inputs=inputs), SPEC)
    assert caught.value.status_code == status
    assert message in str(caught.value)
