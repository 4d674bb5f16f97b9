"""The model store: `cassava convert` writes what a device verifies; a real edge server watching STORE swaps in a new
version under load with no failed request, refuses every broken candidate (truncated, flipped bytes, refused report,
changed classes, unloadable, wrong answers) while the old version keeps answering, and rolls back without a restart.
"""
from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from helpers import LoopbackServer, run_cli

pytestmark = pytest.mark.slow

INTERVAL_S = 1.0  # the watch interval in these tests (the default is 5 s)


@pytest.fixture(scope="session")
def edge_version(standin_int8) -> Path:
    """A converted stand-in (int8): model.tflite, cassava-model.json, report, manifest and self-check."""
    return standin_int8


def rehash(folder: Path) -> None:
    """Rewrite the manifest's file entries: a folder consistent in itself, broken in what it holds."""
    from cassava.shared.manifest import MANIFEST_FILE, _hashed_files, sha256_of

    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["files"] = {name: {"bytes": path.stat().st_size, "sha256": sha256_of(path)}
                         for name, path in _hashed_files(folder)}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def broken(source: Path, dest: Path, how: str) -> Path:
    """A copy of a good version broken in one way, written under a temporary name and renamed into place."""
    temporary = dest.with_name(f".{dest.name}.tmp")
    shutil.copytree(source, temporary)
    model = temporary / "model.tflite"
    if how == "truncated":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    elif how == "sha256":  # flipped bytes, same size
        content = bytearray(model.read_bytes())
        content[len(content) // 2] ^= 0xFF
        model.write_bytes(bytes(content))
    elif how == "report":  # a conversion whose own report says refused (a consistent, honest folder)
        report = json.loads((temporary / "conversion-report.json").read_text())
        report.update(accepted=False, reason="top-1 agreement below --min-agreement")
        (temporary / "conversion-report.json").write_text(json.dumps(report))
        rehash(temporary)
    elif how == "spec":  # the classes clients were given change
        spec = json.loads((temporary / "cassava-model.json").read_text())
        spec["class_names"][-1] = "other"
        (temporary / "cassava-model.json").write_text(json.dumps(spec))
        rehash(temporary)
    elif how == "unloadable":  # a file the manifest vouches for that is no TFLite model
        model.write_bytes(b"not a flatbuffer" * 64)
        rehash(temporary)
    elif how == "selfcheck":  # recorded answers this model does not give
        with np.load(temporary / "cassava-selfcheck.npz") as data:
            pixels, probabilities = data["pixels"], data["probabilities"]
        wrong = np.roll(probabilities, 1, axis=1)
        np.savez_compressed(temporary / "cassava-selfcheck.npz", pixels=pixels, probabilities=wrong)
        rehash(temporary)
    else:
        raise ValueError(how)
    temporary.rename(dest)
    return dest


REASONS = ("truncated", "sha256", "report", "spec", "unloadable", "selfcheck")


def test_convert_writes_what_a_device_verifies(edge_version):
    from cassava.shared.manifest import MANIFEST_FILE, SELFCHECK_FILE, verify

    manifest = json.loads((edge_version / MANIFEST_FILE).read_text())
    assert {"model.tflite", "cassava-model.json", SELFCHECK_FILE} <= set(manifest["files"])
    assert 1 <= manifest["selfcheck"]["images"] <= 4 and manifest["selfcheck"]["tolerance"] > 0
    with np.load(edge_version / SELFCHECK_FILE) as data:
        assert data["pixels"].dtype == np.uint8 and data["pixels"].shape[1:] == (224, 224, 3)
        assert data["probabilities"].shape == (len(data["pixels"]), 6)
    assert verify(edge_version) is None


@pytest.mark.parametrize("how", REASONS)
def test_each_broken_candidate_is_refused_with_its_reason(edge_version, tmp_path, how):
    from cassava.edge.interpreter import load_tflite_classifier
    from cassava.shared.manifest import verify

    serving_spec = load_tflite_classifier(edge_version).spec
    refusal = verify(broken(edge_version, tmp_path / "2", how), serving_spec=serving_spec)
    assert refusal is not None and refusal.reason == how, refusal
    if how == "spec":  # the operator may allow it
        assert verify(tmp_path / "2", serving_spec=serving_spec, allow_spec_change=True) is None


class Load:
    """4 client threads (httpx, through the project's HttpTransport with no retries) sending continuously."""

    def __init__(self, url: str, photo: bytes, clients: int = 4):
        from cassava.shared.protocol.transport import HttpTransport
        from cassava.shared.protocol.v2 import build_request

        self.request = build_request("photo", photos=[photo])
        self.transport = HttpTransport(url, retries=0)
        self.versions, self.failures, self.count = [], [], 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._send, daemon=True) for _ in range(clients)]

    def _send(self):
        while not self.stop.is_set():
            try:
                response = self.transport.infer(self.request)
                with self.lock:
                    self.count += 1
                    self.versions.append((time.monotonic(), response.model_version))
            except Exception as exc:
                with self.lock:
                    self.failures.append(repr(exc))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        self.transport.close()

    def wait_for(self, version: str, since: float, timeout: float = 60.0) -> float:
        """Seconds from `since` until a response names `version`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                hits = [t for t, v in self.versions if v == version and t >= since]
            if hits:
                return hits[0] - since
            time.sleep(0.2)
        raise AssertionError(f"version {version} did not answer within {timeout:.0f} s; last: {self.versions[-3:]}")

    def latest(self, seconds: float = 2.0) -> set:
        time.sleep(seconds)
        with self.lock:
            now = time.monotonic()
            return {v for t, v in self.versions if t >= now - seconds}


@pytest.fixture(scope="module")
def store_server(tmp_path_factory, edge_version, standin_model):
    store = tmp_path_factory.mktemp("store")
    shutil.copytree(edge_version, store / "1")
    server = LoopbackServer.mlserver(tmp_path_factory.mktemp("store-server"), {
        "name": "cassava", "implementation": "cassava.edge.runtime.EdgeRuntime",
        "parameters": {"uri": str(store), "extra": {"pool_size": 2, "store_interval_s": INTERVAL_S}}})
    server.start()
    photo = next((standin_model.parent / "data" / "validation" / "cmd").iterdir()).read_bytes()
    try:
        yield server, store, photo
    finally:
        server.stop()


def metadata(server) -> dict:
    return httpx.get(f"{server.url}/v2/models/cassava", timeout=10).json()


def test_a_new_version_swaps_in_under_load_with_no_failed_request(store_server, edge_version):
    server, store, photo = store_server
    assert metadata(server)["versions"] == ["1"]
    with Load(server.url, photo) as load:
        assert load.latest() == {"1"}
        temporary = store / ".2.tmp"
        shutil.copytree(edge_version, temporary)
        temporary.rename(store / "2")
        appeared = time.monotonic()
        seconds = load.wait_for("2", appeared)
        assert load.latest() == {"2"}
    assert seconds < 60
    assert load.failures == [] and load.count > 20
    assert metadata(server)["versions"] == ["2"] and metadata(server)["parameters"]["serving_version"] == "2"
    gauge = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    assert 'cassava_model_version{model_name="cassava",tier="edge"} 2.0' in gauge


def test_broken_candidates_never_serve_and_the_reason_is_logged(store_server, edge_version):
    server, store, photo = store_server
    for number, how in enumerate(REASONS, start=3):
        broken(edge_version, store / str(number), how)
    with Load(server.url, photo) as load:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(f"({how}:" in server.log() for how in REASONS):
            time.sleep(0.5)
        assert load.latest(3 * INTERVAL_S) == {"2"}
    assert load.failures == []
    log = server.log()
    for number, how in enumerate(REASONS, start=3):
        assert f"store version {number} refused ({how}:" in log
    metrics = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).text
    for how in REASONS:
        assert f'cassava_model_refusals_total{{model_name="cassava",reason="{how}",tier="edge"}} 1.0' in metrics
    listing = run_cli("models", "list", store)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:-1]}
    assert "refused: truncated" in rows["3"] and rows["2"].endswith("verified  <- serves"), listing.stdout


def test_rollback_and_removal_under_load_return_to_the_previous_version(store_server):
    server, store, photo = store_server
    with Load(server.url, photo) as load:
        result = run_cli("models", "rollback", store)
        assert result.returncode == 0 and "version 2 rolled back" in result.stdout, result.stderr
        load.wait_for("1", time.monotonic())
        assert load.latest() == {"1"}
        assert run_cli("models", "restore", store).returncode == 0
        load.wait_for("2", time.monotonic())
        shutil.rmtree(store / "2")  # the other way back: the newest folder removed
        load.wait_for("1", time.monotonic())
        assert load.latest() == {"1"}
    assert load.failures == [] and load.count > 20


def test_the_offline_bundle_installs_the_model_as_the_next_store_version(edge_version, tmp_path):
    """install.sh's model step (the rest installs wheels, tested in a container by test_images.py): each install
    adds a version, renamed into place, that the device verifies."""
    import subprocess

    from cassava.edge.bundle import INSTALL_SH
    from cassava.shared.manifest import verify
    from cassava.shared.server.store import versions

    script = INSTALL_SH.format(python="3.11", major=3, minor=11, dist="cassava-cloud-edge")
    step = script[script.index("# The model becomes"):]
    bundle = tmp_path / "bundle"
    shutil.copytree(edge_version, bundle / "model")
    for _ in range(2):
        proc = subprocess.run(["sh", "-euc", f'here={bundle}; dest={tmp_path / "cassava"}\n{step}'],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    store = tmp_path / "cassava" / "models"
    assert versions(store) == [1, 2] and "model version 2" in proc.stdout
    assert not [p for p in store.iterdir() if p.name.startswith(".")]
    assert verify(store / "2") is None
