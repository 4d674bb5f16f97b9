"""Test helpers: free loopback ports and real MLServer processes started and stopped within bounded time."""
from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import httpx
import numpy as np

from cassava.shared.protocol.v2 import build_request, decode_response
from cassava.shared.server.process import free_port, stop
from cassava.shared.server.process import wait_ready as process_wait_ready
from cassava.testing import LoopbackServer  # noqa: F401 (the one launcher of real servers: serve, mlserver, shipped)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_PHOTOS = SHARED / "data" / "cassava-real"
REAL_MODEL = SHARED / "models" / "cassava-cnn-256" / "saved_model"
REAL_CLASSES = ("cbb", "cbsd", "cgm", "cmd", "healthy")
BIN = Path(sys.executable).parent


def wait_ready(url: str, timeout: float = 120.0, process: subprocess.Popen = None) -> None:
    if not process_wait_ready(url, process, timeout):
        raise TimeoutError(f"{url} not ready after {timeout:.0f} s (or its process exited)")


def stop_process_group(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM a process started with start_new_session=True and its children; SIGKILL after `grace` seconds."""
    stop(process, grace)


def run_cli(*args, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    """Run the installed `cassava` console script for real."""
    return subprocess.run([str(BIN / "cassava"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)


def parse_args(*argv):
    """The real `cassava` parser, in this process: arguments exactly as the command line gives them."""
    from cassava.cli import build_parser

    return build_parser().parse_args([str(a) for a in argv])


def litert_answers(tflite: Path, x: np.ndarray) -> np.ndarray:
    """Scores of a .tflite on [0, 1] float images from LiteRT's bare interpreter, one image at a time, integer I/O
    (de)quantized here from the tensors' own parameters: a reference that shares no code with edge/interpreter.py."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite))
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for image in x:
        if source["dtype"] == np.float32:
            feed = image[None].astype(np.float32)
        else:
            scale, zero = source["quantization"]
            info = np.iinfo(source["dtype"])
            feed = np.clip(np.round(image / scale + zero), info.min, info.max).astype(source["dtype"])[None]
        interpreter.set_tensor(source["index"], feed)
        interpreter.invoke()
        row = interpreter.get_tensor(target["index"])[0].astype(np.float32)
        if target["dtype"] != np.float32:
            scale, zero = target["quantization"]
            row = (row - zero) * scale
        rows.append(row)
    return np.stack(rows)


def require_shared(*paths: Path):
    import pytest

    for path in paths:
        if not path.exists():
            pytest.skip(f"{path} is absent (../shared holds the third-party test data)")


# ---------------------------------------------------------------------------------------------- conversions

_CONVERTED: dict = {}


def convert_once(root: Path, name: str, *args) -> subprocess.CompletedProcess:
    """`cassava convert ARGS --out root/name`, run once per session per name; the result is memoised."""
    if name not in _CONVERTED:
        out = root / name
        result = run_cli("convert", *args, "--out", out, "--quiet", timeout=900)
        result.out = out
        _CONVERTED[name] = result
    return _CONVERTED[name]


def converted(root: Path, name: str, *args) -> Path:
    """A conversion that must succeed: -> its output folder."""
    result = convert_once(root, name, *args)
    assert result.returncode == 0, f"cassava convert {name} failed:\n{result.stderr[-3000:]}"
    return result.out


# The suite's shared conversions carry no leaf gate (--no-gate): their tests pin the ungated answer (three outputs,
# the model's own labels); tests/test_gate.py converts with the gate, on real cassava photos.
def standin_args(mode: str, *extra) -> tuple:
    # --plain: the plain int8 copy these tests are about (and fast); the default search has its own test
    return ("--model", "standin", "--quantize", mode, *(("--plain",) if mode == "int8" else ()), "--no-gate", *extra)


def real_args(mode: str) -> tuple:
    # Calibration: the stand-in's synthetic train photos, resized to 256 by the shared preprocessing. The 27 real
    # photos are the only real test set; calibrating on them would make the agreement measured on them optimistic.
    return ("--model", REAL_MODEL, "--input-scale", "255", "--classes", ",".join(REAL_CLASSES), "--quantize", mode,
            *(("--plain",) if mode == "int8" else ()), "--calibration", "standin:train", "--verify-data", REAL_PHOTOS,
            "--no-gate")


def report_of(out: Path) -> dict:
    return json.loads((out / "conversion-report.json").read_text())


def spec_of(out: Path) -> dict:
    return json.loads((out / "cassava-model.json").read_text())


# ---------------------------------------------------------------------------------------------- servers


def shipped_cloud(uri: str, **extra):
    """The shipped cloud/ model-settings.json and settings.json with only the model (and free ports) changed."""
    model_settings = json.loads((REPO / "cloud" / "model-settings.json").read_text())
    model_settings["parameters"]["uri"] = uri
    model_settings["parameters"]["extra"].update(extra)
    settings = json.loads((REPO / "cloud" / "settings.json").read_text())
    for key in ("host", "http_port", "grpc_port", "metrics_port"):  # free loopback ports instead of 8080-8082
        settings.pop(key)
    return model_settings, settings


class Nginx:
    """A real nginx playing the Seldon ingress: /seldon/default/cassava/ in front of the given replicas."""

    def __init__(self, workdir: Path, replicas):
        self.workdir, self.port = Path(workdir), free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
        servers = "\n        ".join(f"server 127.0.0.1:{r.http_port} max_fails=1 fail_timeout=60s;" for r in replicas)
        template = (Path(__file__).parent / "nginx_seldon.conf.template").read_text()
        for key, value in {"@TMP@": str(self.workdir), "@PORT@": str(self.port), "@SERVERS@": servers,
                           "@NAMESPACE@": "default", "@DEPLOYMENT@": "cassava"}.items():
            template = template.replace(key, value)
        (self.workdir / "nginx.conf").write_text(template)
        self.access_log = self.workdir / "access.log"
        self.process = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Nginx":
        log = open(self.workdir / "nginx.stderr", "ab")
        self.process = subprocess.Popen([self.binary, "-p", str(self.workdir), "-c", str(self.workdir / "nginx.conf"),
                                         "-e", "stderr"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(f"{self.url}/seldon/default/cassava/v2/health/ready", 60, self.process)
        return self

    def infer_lines(self) -> list:
        if not self.access_log.exists():
            return []
        return [line for line in self.access_log.read_text().splitlines() if "/v2/models/cassava/infer" in line]

    def stop(self):
        stop_process_group(self.process)


def photos_tensor(files, content_type="base64"):
    """A V2 `photos` input (base64 over JSON) holding the encoded `files`."""
    tensor = {"name": "photos", "datatype": "BYTES", "shape": [len(files)],
              "data": [base64.b64encode(f).decode() for f in files]}
    if content_type:
        tensor["parameters"] = {"content_type": content_type}
    return tensor


def infer_json(server, body, **kwargs) -> httpx.Response:
    """POST `body` (a dict as JSON, or bytes as they are) to `server`'s /v2/models/cassava/infer."""
    return httpx.post(f"{server.url}/v2/models/cassava/infer", timeout=120, **kwargs,
                      **({"json": body} if not isinstance(body, bytes) else {"content": body}))


def served_version(server) -> str:
    """The model version the server's metadata names (the one its answers carry)."""
    return httpx.get(f"{server.url}/v2/models/cassava", timeout=10).json()["versions"][0]


def png_bomb(width=20000, height=20000) -> bytes:
    """A 66-byte PNG whose header declares width x height (a decompression bomb's header; no real pixels)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def running_tiers(tmp_path_factory, name: str, env=None):
    """A cloud server (TF stand-in) and an edge server (int8 TFLite stand-in), shipped settings, free ports: yields
    {tier: server} while both run (a fixture's body)."""
    root = tmp_path_factory.mktemp(name)
    edge_model = converted(tmp_path_factory.getbasetemp() / "conversions", "standin-int8", *standin_args("int8"))
    cloud_settings = json.loads((REPO / "cloud" / "model-settings.json").read_text())
    cloud_settings["parameters"]["uri"] = "standin"
    edge_settings = json.loads((REPO / "edge" / "model-settings.json").read_text())
    edge_settings["parameters"]["uri"] = str(edge_model)
    yield from all_running({"cloud": LoopbackServer.mlserver(root / "cloud", cloud_settings, env=env),
                            "edge": LoopbackServer.mlserver(root / "edge", edge_settings, env=env)}, timeout=180)


def all_running(servers: dict, timeout: float):
    """Launch every server at once (their start-ups overlap), wait until each is ready, yield {name: server}; stop
    every one however it ends (a fixture's body)."""
    try:
        for server in servers.values():
            server.launch()
        for server in servers.values():
            server.wait_ready(timeout=timeout)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def infer_request(server, client: httpx.Client, request):
    from mlserver.types import InferenceResponse

    reply = client.post(f"{server.url}/v2/models/cassava/infer", content=request.model_dump_json(exclude_none=True),
                        headers={"content-type": "application/json"}, timeout=120)
    assert reply.status_code == 200, reply.text
    return decode_response(InferenceResponse.model_validate_json(reply.content))


def still_serving(server, images):
    assert server.alive()
    with httpx.Client() as client:
        class_ids, probabilities, _ = infer_request(server, client, build_request("uint8", pixels=images[:2]))
    assert class_ids.shape == (2,) and np.allclose(probabilities.sum(1), 1, atol=0.02)  # int8 outputs step in 1/256
