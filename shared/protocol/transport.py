"""How one V2 request reaches one server and its answer comes back: REST (httpx) or gRPC (MLServer's stubs).

Both transports take and return MLServer's own `InferenceRequest` / `InferenceResponse`, so `v2.py` stays the only
place that knows the wire format. Failures come in the two kinds a caller acts on differently:
  Rejected     HTTP 4xx / gRPC INVALID_ARGUMENT...: the request is wrong; retrying cannot help, the message is kept
  Unavailable  refused, reset, timed out, HTTP 5xx / gRPC UNAVAILABLE...: retried with exponential backoff first
Both are CassavaErrors, so a server that cannot be reached at all ends the command with one line.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Optional, Sequence, Tuple
from urllib.parse import urlsplit

from mlserver.types import InferenceRequest, InferenceResponse, MetadataModelResponse

from ..errors import CassavaError

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # as the servers' grpc_max_message_length
MAX_BACKOFF_S = 5.0


RETRY_LATER = (408, 429)  # 4xx statuses that say "try again later", not "this request is wrong"

class TransportError(CassavaError):
    """A request that got no usable answer."""


class Rejected(TransportError):
    """The server refused the request (4xx): the message says why; never retried."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class Unavailable(TransportError):
    """The server could not be reached or failed (connection error, timeout, 5xx), after retries."""


@dataclasses.dataclass
class ModelInfo:
    """What a client learns from `GET /v2/models/<name>`: enough to preprocess and to name the outputs."""

    name: str
    input_size: int
    num_classes: int
    versions: tuple = ()
    parameters: dict = dataclasses.field(default_factory=dict)  # extra fields a runtime may publish


def model_info(metadata: MetadataModelResponse, where: str) -> ModelInfo:
    """Input size from any image input ([-1, H, W, 3]); class count from the `probabilities` output ([-1, C])."""
    sizes = [t.shape[1] for t in metadata.inputs or []
             if len(t.shape) == 4 and t.shape[1] == t.shape[2] and t.shape[1] > 0]
    if not sizes:
        raise CassavaError(f"{where}: the model's metadata names no image input of shape [-1, H, W, 3]; "
                           "is it a cassava model?")
    classes = [t.shape[-1] for t in metadata.outputs or [] if t.name == "probabilities" and len(t.shape) == 2]
    if not classes or classes[0] < 2:
        raise CassavaError(f"{where}: the model's metadata has no `probabilities` output of shape [-1, C]")
    parameters = metadata.parameters.model_dump(exclude_none=True) if metadata.parameters else {}
    return ModelInfo(metadata.name, int(sizes[0]), int(classes[0]), tuple(metadata.versions or ()), parameters)


def check_base_url(url: str) -> str:
    """`http://host:port[/prefix]` -> the same without a trailing slash or a pasted `/v2/...` endpoint."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CassavaError(f"bad URL {url!r}: expected http://HOST:PORT[/PATH], e.g. http://127.0.0.1:8080")
    try:
        parts.port
    except ValueError:
        raise CassavaError(f"bad URL {url!r}: the port is not a number from 1 to 65535") from None
    path = parts.path.split("/v2/")[0].rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}"


def grpc_address_for(base_url: str) -> str:
    """The gRPC address beside a REST URL: same host, HTTP port + 1 (8080 -> 8081, 9080 -> 9081)."""
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port + 1}"


def check_grpc_address(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CassavaError(f"bad gRPC address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:8081")
    return address


class _Retrying:
    """Calls with exponential backoff while the error is `Unavailable`; a `Rejected` goes straight out."""

    def __init__(self, retries: int, backoff_s: float, sleep=time.sleep):
        self.retries = max(0, int(retries))
        self.backoff_s = backoff_s
        self.sleep = sleep  # the clock to wait on (tests give their own to see the backoff without waiting)

    def call(self, attempt):
        for number in range(self.retries + 1):
            try:
                return attempt()
            except Unavailable:
                if number == self.retries:
                    raise
            self.sleep(min(MAX_BACKOFF_S, self.backoff_s * 2 ** number))


class HttpTransport:
    """V2 over REST with one pooled httpx client (thread-safe: the client's worker threads share it)."""

    protocol = "REST"
    grpc = False

    def __init__(self, base_url: str, model_name: str = "cassava", timeout: float = 30.0, retries: int = 3,
                 backoff_s: float = 0.2):
        import httpx

        self.base_url = check_base_url(base_url)
        self.model_name = model_name
        self.address = self.base_url
        self.timeout = timeout
        self._retrying = _Retrying(retries, backoff_s)
        self._client = httpx.Client(timeout=timeout,
                                    limits=httpx.Limits(max_connections=64, max_keepalive_connections=16))

    def ready(self, timeout: float = 1.0) -> bool:
        """`/v2/health/ready` answers 200 in time (a short probe, never retried)."""
        return self._answers_ok(f"{self.base_url}/v2/health/ready", timeout)

    def _answers_ok(self, url: str, timeout: float) -> bool:
        import httpx

        try:
            return self._client.get(url, timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def metadata(self) -> ModelInfo:
        url = f"{self.base_url}/v2/models/{self.model_name}"
        response = self._retrying.call(lambda: self._send("GET", url))
        try:
            return model_info(MetadataModelResponse.model_validate_json(response.content), url)
        except ValueError:
            raise CassavaError(f"{url}: not a V2 model metadata answer ({_body_text(response)[:120]})") from None

    def infer(self, request: InferenceRequest, timeout: Optional[float] = None) -> InferenceResponse:
        """`timeout`: this call's, instead of the transport's (the edge's uplink sizes it to the request)."""
        from . import binary

        url = f"{self.base_url}/v2/models/{self.model_name}/infer"
        more = {"timeout": timeout} if timeout else {}
        if binary.has_binary_inputs(request):  # the binary data extension: a JSON header, then raw tensors
            body, header_length = binary.encode_request(request)
            headers = {"content-type": "application/octet-stream", binary.HEADER_LENGTH: str(header_length)}
        else:
            body = request.model_dump_json(exclude_none=True).encode()
            headers = {"content-type": "application/json"}
        response = self._retrying.call(lambda: self._send("POST", url, content=body, headers=headers, **more))
        try:
            return binary.decode_response(response.content, response.headers.get(binary.HEADER_LENGTH))
        except ValueError:
            raise Unavailable(f"{url}: not a V2 inference answer ({_body_text(response)[:120]})") from None

    def _send(self, method: str, url: str, **kwargs):
        import httpx

        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.TimeoutException:
            raise Unavailable(f"{url}: no answer within {self.timeout:g} s") from None
        except httpx.TransportError as exc:
            raise Unavailable(f"{url}: cannot connect ({exc or type(exc).__name__})") from None
        if response.status_code < 400:
            return response
        message = f"{url}: HTTP {response.status_code}: {_body_text(response)}"
        # 408 and 429 (a server's slow-client cut or fair share, shared/server/guard.py) mean "not now": retried
        if response.status_code < 500 and response.status_code not in RETRY_LATER and \
                not (response.status_code == 400 and not self.model_ready()):
            raise Rejected(message, response.status_code)
        raise Unavailable(message)

    def model_ready(self, timeout: float = 2.0) -> bool:
        """`/v2/models/NAME/ready` answers 200. MLServer answers requests to a model still loading with a 400, which
        is a transient 503 in all but name: a 400 from a model that is not ready is retried (and fails over)."""
        return self._answers_ok(f"{self.base_url}/v2/models/{self.model_name}/ready", timeout)

    def close(self):
        self._client.close()


def _body_text(response) -> str:
    """The error a server gave: MLServer's {"error": ...}, FastAPI's {"detail": ...}, or a proxy's HTML title."""
    text = response.text.strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and ("error" in body or "detail" in body):
        return str(body.get("error") or body.get("detail"))[:500]
    if "<title>" in text:
        return text.split("<title>", 1)[1].split("</title>", 1)[0].strip()
    return " ".join(text.split())[:300] or response.reason_phrase


# gRPC status codes that mean "this request is wrong" (MLServer maps its 400/404/422 to the first three).
_REJECTED_CODES = ("INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "OUT_OF_RANGE", "PERMISSION_DENIED",
                   "UNAUTHENTICATED", "UNIMPLEMENTED", "RESOURCE_EXHAUSTED", "ALREADY_EXISTS")


class GrpcTransport:
    """V2 over gRPC with MLServer's generated stubs and its type converters; photos travel as raw bytes."""

    protocol = "gRPC"
    grpc = True

    def __init__(self, address: str, model_name: str = "cassava", timeout: float = 30.0, retries: int = 3,
                 backoff_s: float = 0.2, headers: Sequence[Tuple[str, str]] = ()):
        import grpc
        from mlserver.grpc.dataplane_pb2_grpc import GRPCInferenceServiceStub

        self.address = check_grpc_address(address)
        self.model_name = model_name
        self.timeout = timeout
        self.headers = tuple(headers)  # e.g. Seldon's `seldon`/`namespace` routing headers at an ingress
        self._retrying = _Retrying(retries, backoff_s)
        self._channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                                                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self._stub = GRPCInferenceServiceStub(self._channel)

    def ready(self, timeout: float = 1.0) -> bool:
        import grpc
        from mlserver.grpc import dataplane_pb2 as pb

        try:
            return self._stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout, metadata=self.headers).ready
        except grpc.RpcError:
            return False

    def model_ready(self, timeout: float = 2.0) -> bool:
        """ModelReady: as HttpTransport.model_ready (a model still loading answers INVALID_ARGUMENT)."""
        import grpc
        from mlserver.grpc import dataplane_pb2 as pb

        try:
            request = pb.ModelReadyRequest(name=self.model_name)
            return self._stub.ModelReady(request, timeout=timeout, metadata=self.headers).ready
        except grpc.RpcError:
            return False

    def metadata(self) -> ModelInfo:
        from mlserver.grpc import dataplane_pb2 as pb
        from mlserver.grpc.converters import ModelMetadataResponseConverter

        where = f"grpc://{self.address} model {self.model_name}"
        request = pb.ModelMetadataRequest(name=self.model_name)
        answer = self._retrying.call(lambda: self._call(self._stub.ModelMetadata, request, where))
        return model_info(ModelMetadataResponseConverter.to_types(answer), where)

    def infer(self, request: InferenceRequest) -> InferenceResponse:
        from mlserver.grpc.converters import ModelInferRequestConverter, ModelInferResponseConverter

        message = ModelInferRequestConverter.from_types(request, model_name=self.model_name)
        where = f"grpc://{self.address} ModelInfer"
        answer = self._retrying.call(lambda: self._call(self._stub.ModelInfer, message, where))
        return ModelInferResponseConverter.to_types(answer)

    def _call(self, method, message, where: str):
        import grpc

        try:
            return method(message, timeout=self.timeout, metadata=self.headers)
        except grpc.RpcError as exc:
            code = exc.code()
            text = f"{where}: {code.name if code else 'error'}: {exc.details() or ''}".rstrip(": ")
            still_loading = code == grpc.StatusCode.INVALID_ARGUMENT and not self.model_ready()
            if code and code.name in _REJECTED_CODES and not still_loading:
                raise Rejected(text, code.value[0]) from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                text = f"{where}: no answer within {self.timeout:g} s"
            raise Unavailable(text) from None

    def close(self):
        self._channel.close()


def make_transport(base_url: str, model_name: str, grpc: bool = False, grpc_address: Optional[str] = None,
                   headers: Sequence[Tuple[str, str]] = (), **options):
    """REST to `base_url`, or gRPC to `grpc_address` (default: the REST port + 1)."""
    if grpc:
        address = grpc_address or grpc_address_for(check_base_url(base_url))
        return GrpcTransport(address, model_name, headers=headers, **options)
    return HttpTransport(base_url, model_name, **options)
