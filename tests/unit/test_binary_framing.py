"""The binary data extension's framing (shared/protocol/binary.py), in process: what tritonclient builds is read
back exactly, our own framing is what tritonclient reads, and every malformed body is a BadFraming that says why."""
from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
import tritonclient.http as triton
from mlserver.types import InferenceRequest

from cassava.shared.protocol import binary
from cassava.shared.protocol.v2 import build_request, decode_input
from cassava.shared.spec import ModelSpec

PHOTOS = [b"\xff\xd8first", b"", b"\x89PNG third \x00\x01"]


def _triton_body(*inputs, outputs=None):
    """The exact body and header length tritonclient.http sends (its own request builder, no server)."""
    from tritonclient.http._utils import _get_inference_request

    return _get_inference_request(inputs=list(inputs), request_id="r1", outputs=outputs, sequence_id=0,
                                  sequence_start=False, sequence_end=False, priority=0, timeout=None,
                                  custom_parameters=None)


def _input(name, array, datatype):
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)  # binary_data=True: tritonclient's default
    return tensor


def test_tritonclients_bytes_input_becomes_mlservers_base64_convention():
    body, header_length = _triton_body(_input("photos", np.array(PHOTOS, dtype=np.object_), "BYTES"))
    request = binary.request_to_json(body, str(header_length))
    (photos,) = request["inputs"]
    assert photos["parameters"] == {"content_type": "base64"}  # binary_data_size consumed
    assert [base64.b64decode(p) for p in photos["data"]] == PHOTOS
    assert request["parameters"] == {"binary_data_output": True} and request["id"] == "r1"


@pytest.mark.parametrize("datatype, dtype", [("UINT8", np.uint8), ("FP32", np.float32)])
def test_fixed_size_inputs_reach_decode_input_unchanged(datatype, dtype):
    spec = ModelSpec(input_size=8, input_scale=255.0, class_names=("a", "b"))
    values = (np.arange(2 * 8 * 8 * 3) % 251).astype(dtype).reshape(2, 8, 8, 3)
    body, header_length = _triton_body(_input("pixels" if datatype == "UINT8" else "payload", values, datatype))
    request = InferenceRequest.model_validate(binary.request_to_json(body, str(header_length)))
    np.testing.assert_array_equal(decode_input(request.inputs[0], spec), values.astype(np.float32))


def test_mixed_json_and_binary_inputs_keep_their_order():
    ids = triton.InferInput("ids", [2], "INT64")
    ids.set_data_from_numpy(np.array([7, 8], dtype=np.int64), binary_data=False)
    body, header_length = _triton_body(ids, _input("photos", np.array(PHOTOS[:1], dtype=np.object_), "BYTES"))
    request = binary.request_to_json(body, str(header_length))
    assert request["inputs"][0]["data"] == [7, 8]
    assert base64.b64decode(request["inputs"][1]["data"][0]) == PHOTOS[0]


def test_our_request_framing_is_what_the_extension_specifies():
    pixels = np.random.default_rng(1).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    body, header_length = binary.encode_request(build_request("binary", pixels=pixels, request_id="x"))
    header = json.loads(body[:header_length])
    assert header["inputs"][0]["parameters"]["binary_data_size"] == pixels.nbytes
    assert header["parameters"] == {"binary_data_output": True}
    assert body[header_length:] == pixels.tobytes() and "data" not in header["inputs"][0]


def test_the_binary_wire_over_grpc_is_compact():
    """gRPC carries bytes natively; there the binary wire sends compact's WebP bytes (see protocol/__init__.py)."""
    pixels = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    over_grpc = build_request("binary", pixels=pixels, grpc=True, request_id="g")
    compact = build_request("compact", pixels=pixels, grpc=True, request_id="g")
    assert over_grpc == compact and over_grpc.inputs[0].name == "photos"
    assert not binary.has_binary_inputs(over_grpc)


def test_our_response_framing_is_what_tritonclient_reads():
    response = {"model_name": "cassava", "id": "r1", "outputs": [
        {"name": "class_ids", "datatype": "INT64", "shape": [2], "data": [3, 0]},
        {"name": "probabilities", "datatype": "FP32", "shape": [2, 2], "data": [0.25, 0.75, 1.0, 0.0]},
        {"name": "labels", "datatype": "BYTES", "shape": [2], "parameters": {"content_type": "str"},
         "data": ["cmd", "cbb"]}]}
    wanted = binary.binary_outputs_wanted({"outputs": [{"name": "class_ids", "parameters": {"binary_data": False}}],
                                           "parameters": {"binary_data_output": True}})
    body, header_length = binary.response_to_binary(json.loads(json.dumps(response)), wanted)
    result = triton.InferResult.from_response_body(body, header_length=header_length)
    assert result.as_numpy("class_ids").tolist() == [3, 0]  # binary_data false on it: stays JSON
    assert "binary_data_size" not in result.get_output("class_ids").get("parameters", {})
    np.testing.assert_array_equal(result.as_numpy("probabilities"), np.array([[0.25, 0.75], [1.0, 0.0]], np.float32))
    assert result.as_numpy("labels").tolist() == [b"cmd", b"cbb"]
    decoded = binary.decode_response(body, str(header_length))  # and our own client reads it too
    assert decoded.outputs[2].data.root == [b"cmd", b"cbb"] and decoded.id == "r1"


def test_no_binary_output_unless_asked():
    assert binary.binary_outputs_wanted({"inputs": []}) is None
    assert binary.binary_outputs_wanted({"parameters": {"binary_data_output": False}}) is None
    wanted = binary.binary_outputs_wanted({"outputs": [{"name": "labels", "parameters": {"binary_data": True}}]})
    assert wanted("labels") and not wanted("probabilities")


def test_bytes_elements_round_trip_and_are_checked():
    packed = binary.pack_elements(PHOTOS)
    assert packed[:4] == struct.pack("<I", len(PHOTOS[0]))
    assert binary.unpack_elements(packed, 3, "x") == PHOTOS
    with pytest.raises(binary.BadFraming, match="shape says 2 elements but the binary data holds 3"):
        binary.unpack_elements(packed, 2, "x")


def _framed(header: dict, tail: bytes = b"") -> tuple:
    head = json.dumps(header).encode()
    return head + tail, str(len(head))


PIXELS_4 = {"name": "pixels", "datatype": "UINT8", "shape": [1, 2, 2, 1]}
PHOTO_1 = {"name": "photos", "datatype": "BYTES", "shape": [1]}


def _with_size(tensor: dict, size) -> dict:
    return {"inputs": [{**tensor, "parameters": {"binary_data_size": size}}]}


MALFORMED = [
    ("header length beyond the body", lambda: (b'{"inputs": []}', "900"), "but the body has only 14 bytes"),
    ("non-numeric header length", lambda: (b'{"inputs": []}', "fourteen"), "must be a non-negative integer"),
    ("negative header length", lambda: (b'{"inputs": []}', "-3"), "must be a non-negative integer"),
    ("header not JSON", lambda: (b"not json at all", "8"), "not a JSON object"),
    ("header without inputs", lambda: _framed({"id": "x"}), "no `inputs` list"),
    ("sizes beyond the body", lambda: _framed(_with_size(PIXELS_4, 4), b"\x00\x01"), "only 2 bytes of the body remain"),
    ("bytes beyond the sizes", lambda: _framed(_with_size(PIXELS_4, 4), b"\x00" * 6), "2 bytes beyond"),
    ("size not a number", lambda: _framed(_with_size(PIXELS_4, "4"), b"\x00" * 4), "must be a non-negative integer"),
    ("size not matching the shape", lambda: _framed(_with_size(PIXELS_4, 3), b"\x00" * 3), "takes 4"),
    ("truncated BYTES element", lambda: _framed(_with_size(PHOTO_1, 8), struct.pack("<I", 9) + b"abcd"),
     "declares 9 bytes but only 4 remain"),
    ("BYTES length cut off", lambda: _framed(_with_size(PHOTO_1, 2), b"\x01\x00"), "cut off inside its 4-byte length"),
    ("BYTES count not the shape",
     lambda: _framed(_with_size({**PHOTO_1, "shape": [2]}, 5), struct.pack("<I", 1) + b"a"), "shape says 2 elements"),
    ("data and binary_data_size", lambda: _framed({"inputs": [{**PIXELS_4, "data": [1, 2, 3, 4],
                                                              "parameters": {"binary_data_size": 4}}]}, b"\x00" * 4),
     "both `data` and binary_data_size"),
    ("unknown datatype", lambda: _framed(_with_size({**PIXELS_4, "datatype": "BF16"}, 8), b"\x00" * 8), "'BF16'"),
    ("bad shape", lambda: _framed(_with_size({**PIXELS_4, "shape": [1, -2]}, 0)), "non-negative integers"),
]


@pytest.mark.parametrize("case, body, words", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_framing_is_refused_with_a_message(case, body, words):
    content, header_length = body()
    with pytest.raises(binary.BadFraming) as caught:
        binary.request_to_json(content, header_length)
    assert words in str(caught.value), str(caught.value)
