"""The V2 binary tensor data extension over REST: framing in both directions, for the server's REST layer and the
client's transport.

A framed body is a JSON header of `Inference-Header-Content-Length` bytes followed by the raw tensors, in the order
of the inputs (or outputs) that carry `parameters.binary_data_size`. Tensors are little-endian, row-major; a BYTES
element is a 4-byte little-endian length and then its bytes. Outputs come back binary when the request says so:
`binary_data` on a requested output, else `binary_data_output` in the request's parameters.

Into MLServer, a binary input becomes JSON it can route like any other: base64 text with `content_type: base64`
(MLServer's own convention for BYTES; for a fixed-size datatype, one string holding the whole tensor, which
`v2.decode_input` reads back with numpy). Every framing fault is a `BadFraming` whose message says what is wrong.
"""
from __future__ import annotations

import base64
import json
import struct
from typing import List, Optional, Tuple

import numpy as np

HEADER_LENGTH = "inference-header-content-length"  # HTTP header names are case-insensitive; ASGI gives lower case
SIZE = "binary_data_size"
BASE64 = "base64"
_LENGTH = struct.Struct("<I")


class BadFraming(ValueError):
    """A body that does not follow the binary extension's framing (answered 400 with this message)."""


# ---------------------------------------------------------------- tensors <-> raw bytes


def numpy_dtype(datatype: str, where: str) -> np.dtype:
    """A fixed-size V2 datatype -> its little-endian numpy dtype (MLServer's mapping)."""
    from mlserver.codecs.numpy import to_dtype
    from mlserver.types import MetadataTensor

    try:
        return to_dtype(MetadataTensor(name=where, datatype=datatype, shape=[0])).newbyteorder("<")
    except (ValueError, KeyError):
        raise BadFraming(f"{where}: datatype {datatype!r} has no binary form here") from None


def pack_elements(elements) -> bytes:
    """BYTES elements (bytes or str) -> each one's 4-byte length, then its bytes."""
    parts = []
    for element in elements:
        data = element.encode() if isinstance(element, str) else bytes(element)
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def unpack_elements(raw: bytes, count: int, where: str) -> List[bytes]:
    """The inverse of pack_elements, checked: exactly `count` elements that fill `raw` exactly."""
    view, offset, elements = memoryview(raw), 0, []
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadFraming(f"{where}: element {len(elements)} is cut off inside its 4-byte length")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise BadFraming(f"{where}: element {len(elements)} declares {size:,} bytes but only "
                             f"{len(raw) - offset:,} remain (a truncated tensor)")
        elements.append(bytes(view[offset:offset + size]))
        offset += size
    if len(elements) != count:
        raise BadFraming(f"{where}: shape says {count} elements but the binary data holds {len(elements)}")
    return elements


def _element_count(shape, where: str) -> int:
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadFraming(f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    return int(np.prod(shape, dtype=np.int64))


def tensor_bytes(datatype: str, shape, data, where: str = "tensor") -> bytes:
    """A tensor's values (numpy array, list, or for BYTES a list of bytes/str) -> its binary form."""
    if datatype == "BYTES":
        return pack_elements(data)
    return np.ascontiguousarray(np.asarray(data, dtype=numpy_dtype(datatype, where))).tobytes()


def tensor_values(datatype: str, shape, raw: bytes, where: str = "tensor"):
    """A tensor's binary form -> flat values: a numpy array, or for BYTES a list of bytes. Sizes are checked."""
    count = _element_count(shape, where)
    if datatype == "BYTES":
        return unpack_elements(raw, count, where)
    dtype = numpy_dtype(datatype, where)
    if len(raw) != count * dtype.itemsize:
        raise BadFraming(f"{where}: {len(raw):,} bytes of binary data, but shape {shape} of {datatype} "
                         f"takes {count * dtype.itemsize:,}")
    return np.frombuffer(raw, dtype=dtype)


# ---------------------------------------------------------------- framing: JSON header + raw tensors


def frame(header: dict, segments: List[bytes]) -> Tuple[bytes, int]:
    """-> (body, length of its JSON header)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join([head, *segments]), len(head)


def unframe(body: bytes, header_length, tensors: str) -> Tuple[dict, List[Tuple[dict, bytes]]]:
    """A framed body -> (its JSON header, [(tensor dict, its raw bytes)] for each entry of `tensors` ("inputs" or
    "outputs") that carries binary_data_size, in order). Checks that the sizes add up to the body exactly."""
    text = str(header_length).strip()
    if not text.isdigit():
        raise BadFraming(f"Inference-Header-Content-Length must be a non-negative integer, got {text[:40]!r}")
    length = int(text)
    if length > len(body):
        raise BadFraming(f"Inference-Header-Content-Length is {length:,} but the body has only {len(body):,} bytes")
    try:
        header = json.loads(body[:length])
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadFraming(f"the first {length:,} bytes (Inference-Header-Content-Length) are not a JSON object: "
                         f"{exc}") from None
    entries = header.get(tensors) if isinstance(header, dict) else None
    if not isinstance(entries, list) or not all(isinstance(t, dict) for t in entries):
        raise BadFraming(f"the JSON header has no `{tensors}` list of objects")
    offset, segments = length, []
    for index, tensor in enumerate(entries):
        parameters = tensor.get("parameters")
        size = parameters.get(SIZE) if isinstance(parameters, dict) else None
        if size is None:
            continue
        where = f"{tensors[:-1]} {tensor.get('name', index)!r}"
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadFraming(f"{where}: {SIZE} must be a non-negative integer, got {size!r}")
        if "data" in tensor:
            raise BadFraming(f"{where}: has both `data` and {SIZE}; send one or the other")
        if offset + size > len(body):
            raise BadFraming(f"{where}: {SIZE} is {size:,} but only {len(body) - offset:,} bytes of the body remain "
                             f"(a truncated tensor, or sizes that do not add up)")
        segments.append((tensor, body[offset:offset + size]))
        offset += size
    if offset != len(body):
        raise BadFraming(f"the body has {len(body) - offset:,} bytes beyond the JSON header and the "
                         f"{SIZE} of its {tensors} (sizes that do not add up)")
    return header, segments


# ---------------------------------------------------------------- server side (shared/server/rest.py)


def request_to_json(body: bytes, header_length) -> dict:
    """A framed request -> the JSON request MLServer takes (as a dict): each binary input's data as base64 with
    content_type base64 (per element for BYTES; the whole tensor for fixed-size types). Sizes and counts are checked."""
    header, segments = unframe(body, header_length, "inputs")
    for tensor, raw in segments:
        where = f"input {tensor.get('name')!r}"
        datatype, shape = tensor.get("datatype"), tensor.get("shape")
        values = tensor_values(datatype if isinstance(datatype, str) else repr(datatype), shape, raw, where)
        if datatype == "BYTES":
            tensor["data"] = [base64.b64encode(v).decode("ascii") for v in values]
        else:
            tensor["data"] = base64.b64encode(raw).decode("ascii")
        parameters = dict(tensor["parameters"])
        del parameters[SIZE]
        tensor["parameters"] = {**parameters, "content_type": BASE64}
    return header


def binary_outputs_wanted(request: dict):
    """-> a function output name -> bool (binary or JSON), or None when the request asks for no binary output."""
    parameters = request.get("parameters") if isinstance(request.get("parameters"), dict) else {}
    default = parameters.get("binary_data_output") is True
    chosen = {}
    for output in request.get("outputs") or []:
        if isinstance(output, dict) and isinstance(output.get("parameters"), dict):
            if isinstance(output["parameters"].get("binary_data"), bool):
                chosen[output.get("name")] = output["parameters"]["binary_data"]
    if not default and not any(chosen.values()):
        return None
    return lambda name: chosen.get(name, default)


def response_to_binary(response: dict, wanted) -> Tuple[bytes, int]:
    """MLServer's JSON response -> (framed body, header length): outputs `wanted(name)` says become binary."""
    segments = []
    for output in response.get("outputs") or []:
        if not wanted(output.get("name")):
            continue
        data = output.pop("data", [])
        if output["datatype"] == "BYTES" and (output.get("parameters") or {}).get("content_type") == BASE64:
            data = [base64.b64decode(v) for v in data]  # the extension carries the bytes themselves
        raw = tensor_bytes(output["datatype"], output.get("shape"), data, f"output {output.get('name')!r}")
        output["parameters"] = {**(output.get("parameters") or {}), SIZE: len(raw)}
        segments.append(raw)
    return frame(response, segments)


# ---------------------------------------------------------------- client side (transport.HttpTransport)


def tensor_data(tensor):
    """A request input's data as given: MLServer's types wrap it in a root model, a client's may not."""
    return getattr(tensor.data, "root", tensor.data)


def _travels_binary(request_input) -> bool:
    """The input carries binary_data_size: its data goes in the binary part of the body."""
    return request_input.parameters is not None and getattr(request_input.parameters, SIZE, None) is not None


def has_binary_inputs(request) -> bool:
    """An InferenceRequest some of whose inputs are to travel as binary (they carry binary_data_size)."""
    return any(_travels_binary(i) for i in request.inputs)


def encode_request(request) -> Tuple[bytes, int]:
    """An InferenceRequest -> (framed body, header length). Inputs with binary_data_size travel as binary (their
    data: a numpy array, or for BYTES a list of bytes); the size is recomputed here."""
    header = request.model_dump(mode="json", exclude_none=True, exclude={"inputs"})
    inputs, segments = [], []
    for request_input in request.inputs:
        if not _travels_binary(request_input):
            inputs.append(request_input.model_dump(mode="json", exclude_none=True))
            continue
        raw = tensor_bytes(request_input.datatype, request_input.shape, tensor_data(request_input),
                           f"input {request_input.name!r}")
        entry = request_input.model_dump(mode="json", exclude_none=True, exclude={"data"})
        entry["parameters"][SIZE] = len(raw)
        inputs.append(entry)
        segments.append(raw)
    return frame({**header, "inputs": inputs}, segments)


def decode_response(body: bytes, header_length: Optional[str]):
    """An answer -> InferenceResponse: framed when the server sent Inference-Header-Content-Length, else JSON."""
    from mlserver.types import InferenceResponse

    if header_length is None:
        return InferenceResponse.model_validate_json(body)
    header, segments = unframe(body, header_length, "outputs")
    for output, raw in segments:
        values = tensor_values(output.get("datatype"), output.get("shape"), raw, f"output {output.get('name')!r}")
        output["data"] = values if isinstance(values, list) else values.tolist()
        del output["parameters"][SIZE]
    return InferenceResponse.model_validate(header)
