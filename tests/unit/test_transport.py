"""HttpTransport's reading of failures, against a small real HTTP server on loopback that answers as MLServer does:
a 400 from a model that is still loading is retried (it is a 503 in all but name), a 400 from a ready model is the
client's fault and is not, a 5xx is retried, and every retry is bounded."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mlserver.types import InferenceRequest

from cassava.shared.protocol.transport import HttpTransport, Rejected, Unavailable


class ScriptedModelServer(ThreadingHTTPServer):
    """`/v2/models/cassava/ready` is 200 once `ready`; infer answers `infer_status` with MLServer's error body."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.ready, self.infer_status, self.infers = False, 400, 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _answer(self, status: int, body: dict):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        ready = self.server.ready and self.path == "/v2/models/cassava/ready"
        self._answer(200 if ready else 400, {} if ready else {"error": "Model cassava is not ready yet."})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.infers += 1
        self._answer(self.server.infer_status, {"error": "some message"})


@pytest.fixture
def server():
    server = ScriptedModelServer()
    yield server
    server.shutdown()
    server.server_close()


def _infer(server, retries=2):
    transport = HttpTransport(server.url, retries=retries, backoff_s=0.01, timeout=5)
    try:
        return transport.infer(InferenceRequest(inputs=[]))
    finally:
        transport.close()


def test_a_400_from_a_model_still_loading_is_retried_as_unavailable(server):
    with pytest.raises(Unavailable, match="HTTP 400"):
        _infer(server, retries=2)
    assert server.infers == 3


def test_a_400_from_a_ready_model_is_rejected_at_once_with_the_message(server):
    server.ready = True
    with pytest.raises(Rejected, match="HTTP 400: some message") as caught:
        _infer(server)
    assert caught.value.status == 400 and server.infers == 1


@pytest.mark.parametrize("status, error, tries", [(404, Rejected, 1), (413, Rejected, 1), (503, Unavailable, 3),
                                                  (429, Unavailable, 3), (408, Unavailable, 3)])  # later, not never
def test_other_statuses(server, status, error, tries):
    server.ready, server.infer_status = True, status
    with pytest.raises(error):
        _infer(server, retries=2)
    assert server.infers == tries
