"""`cassava serve`: user errors are one line and exit 2 before MLServer starts; a real run says where it listens,
answers, and stops with the command; a model MLServer cannot load ends the command with exit code 2.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from helpers import BIN, REAL_CLASSES, free_port, run_cli

pytestmark = pytest.mark.slow


def _one_line_error(result: subprocess.CompletedProcess, words: str):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("cassava serve: error: ") and words in lines[0], result.stderr
    assert result.stdout == ""


def _ports():
    ports = [free_port(), free_port(), free_port()]
    return ["--http-port", ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]], ports


@pytest.fixture
def broken_model(tmp_path) -> Path:
    path = tmp_path / "broken-model"
    path.mkdir()
    (path / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    return path


# ---------------------------------------------------------------------------------------------- user errors


def test_a_missing_model_is_one_line_and_exit_2(tmp_path):
    flags, _ = _ports()
    result = run_cli("serve", "cloud", "--model", "/nonexistent", *flags, timeout=120)
    _one_line_error(result, "model /nonexistent: no such file or directory")


def test_a_corrupt_model_is_one_line_and_exit_2(broken_model):
    flags, ports = _ports()
    result = run_cli("serve", "cloud", "--model", broken_model, *flags, timeout=300)
    _one_line_error(result, f"model {broken_model}: cannot load SavedModel")
    with pytest.raises(httpx.ConnectError):  # refused before any server started
        httpx.get(f"http://127.0.0.1:{ports[0]}/v2/health/live", timeout=5)


def test_classes_that_do_not_fit_the_model_are_one_line(standin_model):
    flags, _ = _ports()
    result = run_cli("serve", "cloud", "--model", "standin", "--classes", "healthy,sick", *flags, timeout=300)
    _one_line_error(result, "model returns 6 scores but the spec names 2 classes")


def test_a_busy_port_is_one_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "cloud", "--model", "standin", "--http-port", port, "--grpc-port", free_port(),
                         "--metrics-port", free_port(), timeout=120)
    _one_line_error(result, f"cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize("args, words", [
    (["edge"], "serve edge needs --model"),
    (["cloud", "--model", "standin", "--http-port", "9000", "--grpc-port", "9000"], "ports must differ"),
    (["cloud", "--model", "standin", "--workers", "-1"], "--workers must be 0 or more"),
    (["cloud", "--model", "standin", "--escalate-to", "http://127.0.0.1:1"], "--escalate-to is for the edge tier"),
    (["edge", "--model", "m.tflite", "--escalate-below", "0.5"], "go with --escalate-to URL"),
])
def test_argument_errors_are_one_line(args, words):
    _one_line_error(run_cli("serve", *args, timeout=120), words)


# ---------------------------------------------------------------------------------------------- the run dir


def test_run_dir_is_the_shipped_settings_with_this_runs_choices(tmp_path):
    from cassava.shared.cache import STANDIN_VERSION
    from cassava.shared.server.serve import write_run_dir
    from cassava.shared.spec import CROPNET_HANDLE
    from cassava.shared.tiers import TIERS

    shipped = json.loads((TIERS["cloud"].folder() / "model-settings.json").read_text())
    run_dir = write_run_dir(tmp_path / "run", "cloud", "some/relative/model", "0.0.0.0", (7001, 7002, 7003), workers=2,
                            input_scale=255.0, classes=("a", "b"))
    model_settings = json.loads((run_dir / "model-settings.json").read_text())
    settings = json.loads((run_dir / "settings.json").read_text())
    assert model_settings["implementation"] == shipped["implementation"] == "cassava.cloud.runtime.CloudRuntime"
    assert model_settings["parameters"]["uri"] == str(Path("some/relative/model").resolve())  # not relative to run_dir
    assert "version" not in model_settings["parameters"]  # the shipped version names CropNet, not this model
    extra = {**shipped["parameters"]["extra"], "input_scale": 255.0, "classes": "a,b"}
    assert model_settings["parameters"]["extra"] == extra
    address = (settings["host"], settings["http_port"], settings["grpc_port"], settings["metrics_port"])
    assert address == ("0.0.0.0", 7001, 7002, 7003)
    assert settings["parallel_workers"] == 2 and settings["metrics_dir"] == str(run_dir / ".metrics")
    assert settings["grpc_max_message_length"] == TIERS["cloud"].settings()["grpc_max_message_length"]

    hub_dir = write_run_dir(tmp_path / "hub", "cloud", CROPNET_HANDLE, "127.0.0.1", (1, 2, 3))
    default = json.loads((hub_dir / "model-settings.json").read_text())
    assert default["parameters"] == shipped["parameters"]  # the CropNet handle as shipped, version included
    standin_dir = write_run_dir(tmp_path / "s", "cloud", "standin", "127.0.0.1", (1, 2, 3))
    standin = json.loads((standin_dir / "model-settings.json").read_text())
    assert standin["parameters"]["uri"] == "standin" and standin["parameters"]["version"] == STANDIN_VERSION


def test_a_run_dir_holding_other_models_is_refused(tmp_path):
    nested = tmp_path / "run" / "old-model"
    nested.mkdir(parents=True)
    (nested / "model-settings.json").write_text("{}")
    flags, _ = _ports()
    result = run_cli("serve", "cloud", "--model", "/nonexistent", *flags, "--run-dir", tmp_path / "run", timeout=120)
    _one_line_error(result, "model /nonexistent: no such file")  # the model is checked first
    result = run_cli("serve", "cloud", "--model", "standin", *flags, "--run-dir", tmp_path / "run", timeout=300)
    _one_line_error(result, "holds other models' settings")


def test_mlserver_failing_to_load_the_model_ends_serve_with_one_clear_error(tmp_path, broken_model):
    """MLServer logs the runtime's error and exits 0; `serve` sees the model never got ready and says why."""
    from cassava.shared.errors import CassavaError
    from cassava.shared.server.serve import serve, write_run_dir

    ports = (free_port(), free_port(), free_port())
    run_dir = write_run_dir(tmp_path / "run", "cloud", str(broken_model), "127.0.0.1", ports)
    with pytest.raises(CassavaError) as failure:
        serve(run_dir, "cloud")
    message = str(failure.value)
    expected = f"model failed to load in MLServer: model {broken_model}: cannot load SavedModel"
    assert message.startswith(expected), message
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------- a real run


class Serving:
    """`cassava serve ...` as a real process; `listening` is the line it printed once the model was ready."""

    def __init__(self, *args, timeout: float = 300):
        self.process = subprocess.Popen([str(BIN / "cassava"), "serve", *map(str, args)], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.process.stdout], daemon=True).start()
        self.stderr = []
        threading.Thread(target=lambda: [self.stderr.append(line) for line in self.process.stderr], daemon=True).start()
        self.stdout = []
        deadline = time.time() + timeout
        while time.time() < deadline and not any(line.startswith("cassava (") for line in self.stdout):
            try:
                self.stdout.append(lines.get(timeout=1))
            except queue.Empty:
                if self.process.poll() is not None:
                    break
        if not self.stdout:
            self.kill()
            raise RuntimeError(f"cassava serve printed nothing; stderr:\n{''.join(self.stderr)[-3000:]}")
        self.listening = self.stdout[0].strip()
        try:
            self.stdout.append(lines.get(timeout=5))  # the model line follows
        except queue.Empty:
            pass

    def kill(self):
        """SIGKILL to the whole process group (the command and MLServer), whatever is left of it."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)


def _refused(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=3)
    except httpx.ConnectError:
        return True
    return False


def test_serve_standin_says_where_it_listens_answers_and_stops_with_sigterm(tmp_path, standin_model):
    from cassava.shared.protocol.transport import GrpcTransport, HttpTransport
    from cassava.shared.protocol.v2 import build_request, decode_response

    flags, (http_port, grpc_port, metrics_port) = _ports()
    run = Serving("cloud", "--model", "standin", *flags, "--run-dir", tmp_path / "run")
    try:
        assert run.listening == (f"cassava (cloud) on http://127.0.0.1:{http_port}/v2/models/cassava/infer, "
                                 f"gRPC 127.0.0.1:{grpc_port}, metrics http://127.0.0.1:{metrics_port}/metrics")
        assert "stand-in model, synthetic data" in run.stdout[1]
        photo = next((standin_model.parent / "data" / "validation" / "cmd").iterdir()).read_bytes()
        for transport in (HttpTransport(f"http://127.0.0.1:{http_port}", retries=0),
                          GrpcTransport(f"127.0.0.1:{grpc_port}", retries=0)):
            request = build_request("photo", photos=[photo], grpc=transport.grpc)
            _, probabilities, labels = decode_response(transport.infer(request))
            transport.close()
            assert probabilities.shape == (1, 6) and labels[0] in ("cbb", "cbsd", "cgm", "cmd", "healthy", "unknown")
        assert "cassava_predictions_total" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        page = httpx.get(f"http://127.0.0.1:{http_port}/", timeout=10)  # the phone page (tests/test_page.py)
        assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
        settings = json.loads((tmp_path / "run" / "model-settings.json").read_text())
        assert settings["parameters"]["uri"] == "standin"

        run.process.send_signal(signal.SIGTERM)  # the command alone: it must take MLServer down with it
        assert run.process.wait(60) == 0
        deadline = time.time() + 30
        while time.time() < deadline and not all(_refused(p) for p in (http_port, metrics_port)):
            time.sleep(0.5)
        assert _refused(http_port) and _refused(metrics_port)
    finally:
        run.kill()


@pytest.mark.real
def test_serve_real_model_with_a_spec_file_and_a_worker_process(tmp_path, real_model, real_photos):
    """The third-party model described by a cassava-model.json beside it (no flags), in one MLServer worker
    process: the spec reaches the worker, and the custom metrics come back from it."""
    from cassava.shared.data import load_samples
    from cassava.shared.protocol.transport import HttpTransport
    from cassava.shared.protocol.v2 import build_request, decode_response
    from cassava.shared.spec import ModelSpec

    model = tmp_path / "cassava-cnn-256"
    shutil.copytree(real_model, model)
    spec = ModelSpec(input_size=256, input_scale=255, class_names=REAL_CLASSES,
                     description="cassava-cnn-256 (third party)")
    spec.save(model)
    flags, (http_port, _, metrics_port) = _ports()
    run = Serving("cloud", "--model", model, *flags, "--workers", 1)
    try:
        assert "cassava-cnn-256 (third party); 256x256 input, classes cbb,cbsd,cgm,cmd,healthy" in run.stdout[1]
        metadata = httpx.get(f"http://127.0.0.1:{http_port}/v2/models/cassava", timeout=30).json()
        assert metadata["inputs"][0]["shape"] == [-1, 256, 256, 3] and metadata["outputs"][1]["shape"] == [-1, 5]
        samples = load_samples(str(real_photos))
        transport = HttpTransport(f"http://127.0.0.1:{http_port}", timeout=120, retries=0)
        labels = []
        for start in range(0, len(samples), 9):
            photos = [Path(s.source).read_bytes() for s in samples[start:start + 9]]
            labels += decode_response(transport.infer(build_request("photo", photos=photos)))[2]
        transport.close()
        right = sum(label == sample.label for label, sample in zip(labels, samples))
        assert right == 20, f"{right}/27 (in-process TensorFlow gets 20/27 with this preprocessing)"
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        counted = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("cassava_predictions_total{"))
        assert counted == len(samples)
    finally:
        run.process.send_signal(signal.SIGTERM)
        try:
            run.process.wait(60)
        finally:
            run.kill()


def test_killing_serve_outright_takes_mlserver_down(tmp_path, standin_model):
    """kill -9 of the command (OOM killer, a supervisor's hard stop) leaves no server holding the ports."""
    flags, (http_port, _, metrics_port) = _ports()
    run = Serving("cloud", "--model", "standin", *flags, "--run-dir", tmp_path / "run")
    try:
        assert run.listening.startswith(f"cassava (cloud) on http://127.0.0.1:{http_port}/")
        assert not _refused(http_port)
        run.process.kill()  # SIGKILL to the command alone, not its process group
        run.process.wait(10)
        deadline = time.time() + 60
        while time.time() < deadline and not (_refused(http_port) and _refused(metrics_port)):
            time.sleep(0.5)
        assert _refused(http_port) and _refused(metrics_port)
    finally:
        run.kill()
