"""Wire codecs for the V2 (Open Inference) protocol, both directions, built on MLServer's own types and codecs.

Requests carry images in one of three input kinds, all on `/v2/models/<name>/infer`:
  payload  FP32  [N, H, W, 3]  already preprocessed, in the model's pixel range (the tutorial's NumpyCodec client)
  pixels   UINT8 [N, H, W, 3]  resized by the shared preprocessing; the server applies the pixel range
  photos   BYTES [N]           encoded JPEG/PNG/WebP of any size, base64 over REST, raw bytes over gRPC
Over REST any input may also come in the binary data extension (binary.py; the server's REST layer hands it on as
base64, which decode_input reads).
Responses: outputs[0] `class_ids` INT64 [N], `probabilities` FP32 [N, C], `labels` BYTES [N]; a request naming
`outputs` gets only those (requested_outputs).
"""
from __future__ import annotations

import base64
import binascii
from typing import List, Optional, Sequence

import numpy as np
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor, Parameters, RequestInput, ResponseOutput

from ..budget import PixelLimits
from ..policy import UNKNOWN, unknown_class_id
from ..preprocess import pixel_range_ok, to_model_input
from ..spec import ModelSpec
from . import ANSWERED_BY, CLASS_IDS, FLOAT_INPUT, LABELS, PHOTOS_INPUT, PIXELS_INPUT, PROBABILITIES, WIRE_FORMATS
from .binary import BASE64, numpy_dtype, tensor_data
from .images import BadPayload, ImagePayloadCodec

DEFAULT_MAX_REQUEST_IMAGES = 64


class BadRequest(MLServerError):
    """A request the model cannot take: MLServer answers it with this status code and message."""

    def __init__(self, msg: str, status_code: int = 400):
        super().__init__(msg, status_code)


# ---------------------------------------------------------------- client side: images -> request


def photos_input(photos: Sequence[bytes], grpc: bool = False) -> RequestInput:
    return ImagePayloadCodec.encode_input(PHOTOS_INPUT, photos, use_bytes=grpc)  # gRPC carries raw bytes


def build_request(wire: str, pixels: Optional[np.ndarray] = None, photos: Optional[Sequence[bytes]] = None,
                  input_scale: float = 1.0, grpc: bool = False, request_id: Optional[str] = None) -> InferenceRequest:
    """One request in a wire format. `pixels` are uint8 [N, H, W, 3] from `preprocess`; `photos` encoded files."""
    if wire == "float32":
        request_input = NumpyCodec.encode_input(FLOAT_INPUT, to_model_input(pixels, input_scale))
    elif wire == "uint8":
        request_input = NumpyCodec.encode_input(PIXELS_INPUT, np.ascontiguousarray(pixels, dtype=np.uint8))
    elif wire == "compact":
        request_input = photos_input([ImagePayloadCodec.compact(p) for p in pixels], grpc)
    elif wire == "photo":
        request_input = photos_input(photos, grpc)
    elif wire == "binary" and grpc:  # gRPC is binary already; its fastest form here is compact (see WIRE_FORMATS)
        return build_request("compact", pixels=pixels, grpc=True, request_id=request_id)
    elif wire == "binary":  # raw bytes after a JSON header (protocol/binary.py); answers in binary too
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        request_input = RequestInput(name=PIXELS_INPUT, datatype="UINT8", shape=list(pixels.shape), data=pixels,
                                     parameters=Parameters(binary_data_size=pixels.nbytes))
        return InferenceRequest(id=request_id, inputs=[request_input], parameters=Parameters(binary_data_output=True))
    else:
        raise ValueError(f"unknown wire format {wire!r} (choose from {', '.join(WIRE_FORMATS)})")
    return InferenceRequest(id=request_id, inputs=[request_input])


def decode_response(response: InferenceResponse):
    """-> (class_ids int64 [N], probabilities float32 [N, C], labels list[str])."""
    outputs = {o.name: o for o in response.outputs}
    for name in (CLASS_IDS, PROBABILITIES, LABELS):
        if name not in outputs:
            raise ValueError(f"response has no {name!r} output (has {', '.join(outputs)})")
    class_ids = NumpyCodec.decode_output(outputs[CLASS_IDS]).reshape(-1).astype(np.int64)
    probabilities = NumpyCodec.decode_output(outputs[PROBABILITIES]).astype(np.float32)
    labels = [s if isinstance(s, str) else s.decode() for s in StringCodec.decode_output(outputs[LABELS])]
    return class_ids, probabilities.reshape(len(class_ids), -1), labels


def decode_answered_by(response: InferenceResponse) -> Optional[List[str]]:
    """An escalating edge's `answered_by` per image, or None when the server sent none."""
    for output in response.outputs:
        if output.name == ANSWERED_BY:
            return [s if isinstance(s, str) else s.decode() for s in StringCodec.decode_output(output)]
    return None


def decode_settlement_ids(response: InferenceResponse) -> Optional[List[str]]:
    """An escalating edge's settlement id per image ("" where the edge answered alone), or None when it sent none.
    A response parameter, comma-separated (gRPC parameters are scalars): GET /v2/models/{name}/settlements/{id}."""
    parameters = response.parameters.model_dump() if response.parameters is not None else {}
    ids = parameters.get("settlement_ids")
    return ids.split(",") if isinstance(ids, str) else None


# ---------------------------------------------------------------- server side: request -> model input


def metadata_inputs(spec: ModelSpec) -> List[MetadataTensor]:
    image = [-1, spec.input_size, spec.input_size, 3]
    return [
        MetadataTensor(name=FLOAT_INPUT, datatype="FP32", shape=image),
        MetadataTensor(name=PIXELS_INPUT, datatype="UINT8", shape=image),
        MetadataTensor(name=PHOTOS_INPUT, datatype="BYTES", shape=[-1]),
    ]


def metadata_outputs(spec: ModelSpec) -> List[MetadataTensor]:
    return [
        MetadataTensor(name=CLASS_IDS, datatype="INT64", shape=[-1]),
        MetadataTensor(name=PROBABILITIES, datatype="FP32", shape=[-1, spec.num_classes]),
        MetadataTensor(name=LABELS, datatype="BYTES", shape=[-1]),
    ]


def _batch_size(request_input: RequestInput, max_images: int) -> int:
    if not request_input.shape:
        raise BadRequest(f"input {request_input.name!r}: shape is missing")
    n = int(request_input.shape[0])
    if n < 1:
        raise BadRequest(f"input {request_input.name!r}: empty batch (shape {request_input.shape})")
    if n > max_images:
        raise BadRequest(f"input {request_input.name!r}: batch of {n} images is above the limit of {max_images} "
                         "per request", 413)
    return n


def _is_base64_tensor(request_input: RequestInput) -> bool:
    """A fixed-size tensor as one base64 string of its little-endian bytes: how the REST layer hands MLServer an
    input that arrived in the binary data extension (protocol/binary.py)."""
    content_type = request_input.parameters.content_type if request_input.parameters else None
    data = tensor_data(request_input)
    return content_type == BASE64 and isinstance(data, str)


def _base64_tensor(request_input: RequestInput) -> np.ndarray:
    data = tensor_data(request_input)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    dtype = numpy_dtype(request_input.datatype, f"input {request_input.name!r}")
    if len(raw) % dtype.itemsize:
        raise ValueError(f"{len(raw)} bytes is not a whole number of {request_input.datatype} values")
    return np.frombuffer(raw, dtype=dtype)


def _image_tensor(request_input: RequestInput, spec: ModelSpec, dtype) -> np.ndarray:
    """A rank-4 tensor input (its rank checked by the caller) -> an array of model-sized images."""
    expected = [spec.input_size, spec.input_size, 3]
    shape = list(request_input.shape)
    if shape[1:] != expected:
        raise BadRequest(f"input {request_input.name!r}: expected images of {expected} (H, W, C), got {shape[1:]}")
    try:
        if _is_base64_tensor(request_input):
            array = _base64_tensor(request_input)
        else:
            array = NumpyCodec.decode_input(request_input)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequest(f"input {request_input.name!r}: data does not match shape {shape} and "
                         f"{request_input.datatype} ({exc})") from None
    if array.size != int(np.prod(shape)):
        raise BadRequest(f"input {request_input.name!r}: {array.size} values for shape {shape}")
    return array.astype(dtype, copy=False).reshape(shape)


def check_request(request: InferenceRequest, spec: ModelSpec,
                  max_images: int = DEFAULT_MAX_REQUEST_IMAGES) -> RequestInput:
    """The envelope: exactly one input, its rank, and a batch size from 1 to `max_images`. -> that input."""
    if len(request.inputs) != 1:
        names = ", ".join(i.name for i in request.inputs) or "none"
        raise BadRequest(f"expected exactly one input ({FLOAT_INPUT}, {PIXELS_INPUT} or {PHOTOS_INPUT}), got {names}")
    request_input = request.inputs[0]
    if request_input.datatype != "BYTES" and len(request_input.shape or []) != 4:  # say "rank" before reading N
        raise BadRequest(f"input {request_input.name!r}: expected rank 4 [N, {spec.input_size}, {spec.input_size}, 3], "
                         f"got shape {list(request_input.shape or [])}")
    _batch_size(request_input, max_images)
    return request_input


def photo_files(request_input: RequestInput) -> Optional[List[bytes]]:
    """A checked input's encoded image files when it carries photos (BYTES); None for a tensor input."""
    name, datatype = request_input.name, request_input.datatype
    if not (name == PHOTOS_INPUT or (name == FLOAT_INPUT and datatype == "BYTES")):
        return None
    if datatype != "BYTES":
        raise BadRequest(f"input {name!r}: datatype must be BYTES (encoded images), got {datatype}")
    try:
        files = ImagePayloadCodec.decode_input(request_input)
    except BadPayload as exc:
        raise BadRequest(str(exc), exc.status) from None
    n = int(request_input.shape[0])
    if len(files) != n:
        raise BadRequest(f"input {name!r}: shape says {n} images but {len(files)} were sent")
    return files


def decode_input(request_input: RequestInput, spec: ModelSpec, limits: PixelLimits = PixelLimits(),
                 draft: bool = False) -> np.ndarray:
    """A checked input -> float32 [N, H, W, 3] in the model's pixel range. Every problem is a BadRequest
    (HTTP 4xx / gRPC INVALID_ARGUMENT; 413 / RESOURCE_EXHAUSTED for too many pixels) whose message says what was
    wrong. Photos: `limits` are checked from the headers before decoding (budget.py); `draft` as in preprocess."""
    name, datatype = request_input.name, request_input.datatype
    files = photo_files(request_input)
    if files is not None:
        try:
            pixels = ImagePayloadCodec.to_pixels(files, spec.input_size, name, limits, draft)
        except BadPayload as exc:
            raise BadRequest(str(exc), exc.status) from None
        return to_model_input(pixels, spec.input_scale)
    if name == PIXELS_INPUT or (name == FLOAT_INPUT and datatype == "UINT8"):
        if datatype != "UINT8":
            raise BadRequest(f"input {name!r}: datatype must be UINT8 pixels 0-255, got {datatype}")
        return to_model_input(_image_tensor(request_input, spec, np.uint8), spec.input_scale)
    if name == FLOAT_INPUT:
        if datatype != "FP32":
            raise BadRequest(f"input {name!r}: datatype must be FP32 (or UINT8 pixels, or BYTES photos), "
                             f"got {datatype}")
        x = _image_tensor(request_input, spec, np.float32)
        if not pixel_range_ok(x, spec.input_scale):
            finite = np.all(np.isfinite(x))
            bad = f"values outside [0, {spec.input_scale:g}]" if finite else "NaN or infinite values"
            raise BadRequest(f"input {name!r}: {bad}; this model takes pixels in [0, {spec.input_scale:g}]")
        return x
    raise BadRequest(f"unknown input {name!r}: expected {FLOAT_INPUT} (FP32), {PIXELS_INPUT} (UINT8) "
                     f"or {PHOTOS_INPUT} (BYTES)")


def request_to_model_input(request: InferenceRequest, spec: ModelSpec,
                           max_images: int = DEFAULT_MAX_REQUEST_IMAGES) -> np.ndarray:
    """check_request + decode_input: a whole request -> float32 [N, H, W, 3] in the model's pixel range."""
    return decode_input(check_request(request, spec, max_images), spec)


OUTPUTS = (CLASS_IDS, PROBABILITIES, LABELS)


def requested_outputs(request: InferenceRequest, available: Sequence[str] = OUTPUTS) -> Sequence[str]:
    """The output names a request asks for, in its order (all of `available`, the model's declared outputs, when it
    names none). OIP: a server returns only the requested outputs; an unknown name is the client's mistake (400),
    not silently dropped."""
    names = [o.name for o in request.outputs or []]
    unknown = [name for name in names if name not in available]
    if unknown:
        raise BadRequest(f"unknown output {unknown[0]!r}: this model has outputs {', '.join(available)}")
    return list(dict.fromkeys(names)) or list(available)


def build_response(model_name: str, model_version: Optional[str], probabilities: np.ndarray, spec: ModelSpec,
                   request_id: Optional[str] = None, outputs: Sequence[str] = OUTPUTS,
                   more: Optional[dict] = None, unknown: Optional[np.ndarray] = None) -> InferenceResponse:
    """`outputs`: the names to answer with, in that order (requested_outputs); `more`: outputs a runtime adds
    beyond the three ({name: ResponseOutput}, e.g. the edge's `answered_by`), placed where `outputs` names them.
    `unknown`: bool [N], photos answered as label `unknown` (shared/policy.py), class id `unknown_class_id`."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    class_ids = probabilities.argmax(axis=1).astype(np.int64)
    names = list(spec.class_names)
    if unknown is not None and np.any(unknown):
        class_ids[np.asarray(unknown, dtype=bool)] = unknown_class_id(names)
        names = names if UNKNOWN in names else [*names, UNKNOWN]
    encoded = {}
    if CLASS_IDS in outputs:
        encoded[CLASS_IDS] = NumpyCodec.encode_output(CLASS_IDS, class_ids)
        encoded[CLASS_IDS].shape = [len(class_ids)]  # NumpyCodec adds a trailing dim to 1-D arrays; spec'd: [N]
    if PROBABILITIES in outputs:
        encoded[PROBABILITIES] = NumpyCodec.encode_output(PROBABILITIES, probabilities)
    if LABELS in outputs:
        encoded[LABELS] = StringCodec.encode_output(LABELS, [names[i] for i in class_ids])
        encoded[LABELS].shape = [len(class_ids)]
    encoded.update(more or {})
    response_outputs: List[ResponseOutput] = [encoded[name] for name in outputs]
    return InferenceResponse(model_name=model_name, model_version=model_version, id=request_id,
                             outputs=response_outputs)
