"""Both container images, built on this machine and run as deployed (marker `containers`).

The images are built by deploy/images/build.sh, as `make images` does: dockerd and qemu's binfmt registration are set
up when missing (as root), the Debian bookworm bases and the wheelhouses come from the cache outside the checkout,
and the build itself has no network. The edge image is linux/arm64 and runs under qemu: these tests prove it answers
correctly on aarch64, never how fast. What the manifests say (ports, env, probes, mounts) is read from
`kubectl kustomize` output and used to start the real containers, so a manifest that does not match what the
container serves fails here.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from cassava.shared.server.process import answers_ok

from helpers import (
    REAL_CLASSES,
    REAL_MODEL,
    REAL_PHOTOS,
    REPO,
    SHARED,
    Nginx,
    converted,
    free_port,
    real_args,
    require_shared,
    run_cli,
)

pytestmark = [pytest.mark.containers, pytest.mark.slow, pytest.mark.timeout(3600)]

DOCKER = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker")
SCRIPTS = REPO / "deploy" / "images"
MORE_PHOTOS = SHARED / "data" / "cassava-more"
PER_CLASS = 12  # of cassava-more, under qemu: enough to compare, bounded in time
EDGE_PORTS = (9080, 9081, 9082)
CLOUD_PORTS = (8080, 8081, 8082)


# ----------------------------------------------------------------------------- building

def _docker_usable() -> str | None:
    """Why the images cannot be built here, or None."""
    if DOCKER is None:
        return "docker is not installed (apt-get install docker.io qemu-user-static debootstrap)"
    if os.geteuid() != 0 and subprocess.run([DOCKER, "info"], capture_output=True, timeout=60).returncode != 0:
        return "not root and no running docker daemon: dockerd, binfmt_misc and debootstrap need root"
    return None


def _build(tier: str, log_dir: Path) -> str:
    reason = _docker_usable()
    if reason:
        pytest.skip(reason)
    log = log_dir / f"build-{tier}.log"
    with open(log, "w") as handle:
        proc = subprocess.run([str(SCRIPTS / "build.sh"), tier], stdout=subprocess.PIPE, stderr=handle, text=True,
                              timeout=3000, env={**os.environ, "PYTHON": sys.executable})
    tail = "\n".join(log.read_text().splitlines()[-30:])
    assert proc.returncode == 0, f"deploy/images/build.sh {tier} failed:\n{tail}"
    return proc.stdout.split()[-1]


@pytest.fixture(scope="session")
def cloud_image(tmp_path_factory) -> str:
    return _build("cloud", tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def edge_image(tmp_path_factory) -> str:
    return _build("edge", tmp_path_factory.mktemp("images"))


def docker(*args, timeout=300, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([DOCKER, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"docker {' '.join(map(str, args))}: {proc.stderr.strip()}"
    return proc


# ----------------------------------------------------------------------------- running

class Container:
    """`docker run -d` with each container port published on a free 127.0.0.1 port; removed on stop()."""

    def __init__(self, image: str, ports=(), env=None, volumes=(), tmpfs=(), read_only=True, args=()):
        self.name = f"cassava-test-{uuid.uuid4().hex[:8]}"
        self.ports = {int(port): free_port() for port in ports}
        self.command = [DOCKER, "run", "-d", "--name", self.name]
        for port, host_port in self.ports.items():
            self.command += ["-p", f"127.0.0.1:{host_port}:{port}"]
        for key, value in (env or {}).items():
            self.command += ["-e", f"{key}={value}"]
        for volume in volumes:
            self.command += ["-v", volume]
        for path in tmpfs:
            self.command += ["--tmpfs", path]
        if read_only:
            self.command.append("--read-only")
        self.command += [image, *args]

    def start(self) -> "Container":
        proc = subprocess.run(self.command, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{' '.join(self.command)}: {proc.stderr}"
        return self

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{self.ports[port]}"

    def running(self) -> bool:
        return docker("inspect", "-f", "{{.State.Running}}", self.name, check=False).stdout.strip() == "true"

    def logs(self) -> str:
        proc = docker("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def wait_ready(self, port: int, path: str = "/v2/health/ready", timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if answers_ok(self.url(port) + path, timeout=5):
                return
            assert self.running(), f"{self.name} exited before it was ready:\n{self.logs()[-3000:]}"
            time.sleep(1)
        raise AssertionError(f"{self.name} not ready after {timeout:.0f} s:\n{self.logs()[-3000:]}")

    def exec(self, *args) -> subprocess.CompletedProcess:
        return docker("exec", self.name, *args, check=False, timeout=300)

    def stop(self):
        docker("rm", "-f", self.name, check=False)


def grpc_server_ready(address: str) -> bool:
    import grpc
    from mlserver.grpc import dataplane_pb2 as pb
    from mlserver.grpc.dataplane_pb2_grpc import GRPCInferenceServiceStub

    with grpc.insecure_channel(address) as channel:
        return GRPCInferenceServiceStub(channel).ServerReady(pb.ServerReadyRequest(), timeout=30).ready


# ----------------------------------------------------------------------------- manifests

def rendered_container(rel: str, kind: str) -> tuple:
    """The first container of the first `kind` in `kubectl kustomize deploy/<rel>`, and its pod spec."""
    kubectl = Path(sys.executable).parent / "kubectl"
    proc = subprocess.run([str(kubectl if kubectl.exists() else "kubectl"), "kustomize", str(REPO / "deploy" / rel)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = next(d for d in yaml.safe_load_all(proc.stdout) if d and d["kind"] == kind)
    if kind == "SeldonDeployment":
        pod = doc["spec"]["predictors"][0]["componentSpecs"][0]["spec"]
    else:
        pod = doc["spec"]["template"]["spec"]
    return pod["containers"][0], pod


def manifest_env(container: dict) -> dict:
    return {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}


def declared_ports(container: dict) -> dict:
    return {p["name"]: p["containerPort"] for p in container.get("ports") or []}


def check_probes(running: Container, container: dict, ports: dict) -> None:
    """Every probe of the manifest's container answers 200 on the real container, on the port it names."""
    probes = [container[key] for key in ("startupProbe", "livenessProbe", "readinessProbe") if key in container]
    assert probes, "the manifest declares no probes"
    for probe in probes:
        get = probe["httpGet"]
        port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        assert answers_ok(running.url(port) + get["path"], timeout=5), f"probe {get} fails on the container"


# ----------------------------------------------------------------------------- models and answers

@pytest.fixture(scope="session")
def real_cloud_model(tmp_path_factory) -> Path:
    """The third-party SavedModel with the cassava-model.json saying its pixel range and classes (a copy outside
    the checkout: a file cannot be mounted into a read-only mount of ../shared without creating it there)."""
    require_shared(REAL_MODEL)
    folder = tmp_path_factory.mktemp("real-cloud") / "model"
    shutil.copytree(REAL_MODEL, folder)
    (folder / "cassava-model.json").write_text(json.dumps({"input_scale": 255, "class_names": list(REAL_CLASSES)}))
    folder.chmod(0o755)
    return folder


@pytest.fixture(scope="session")
def real_int8(conversions) -> Path:  # noqa: F811 (the fixture imported above)
    """`cassava convert` of the third-party model to int8, on this x86 machine, as a user would before deploying
    (the suite's one conversion of it, shared with test_convert and test_edge)."""
    require_shared(REAL_MODEL, REAL_PHOTOS)
    return converted(conversions, "real-int8", *real_args("int8"))


def edge_photos() -> list:
    require_shared(REAL_PHOTOS, MORE_PHOTOS)
    photos = sorted(p for p in REAL_PHOTOS.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for folder in sorted(p for p in MORE_PHOTOS.iterdir() if p.is_dir()):
        photos += sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:PER_CLASS]
    return photos


def predictions(out: Path, *args, n: int = 0) -> dict:
    """file -> (top-1, its probability) from `cassava predict ... -n N --json` (N = 0: every image)."""
    result = run_cli("predict", *args, "-n", n, "--quiet", "--json", out, timeout=1800)
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text())
    records = records["records"] if isinstance(records, dict) else records
    assert all("error" not in r for r in records), [r for r in records if "error" in r][:3]
    return {r["file"]: (r["prediction"], r["probability"]) for r in records}


def compare(served: dict, reference: dict) -> float:
    """Same files, same top-1 everywhere; returns max |Δp| of the top-1 class."""
    assert served.keys() == reference.keys()
    differ = [f for f in served if served[f][0] != reference[f][0]]
    assert not differ, f"{len(differ)}/{len(served)} photos with another top-1, e.g. {differ[:3]}"
    return max(abs(served[f][1] - reference[f][1]) for f in served)


# ----------------------------------------------------------------------------- edge (linux/arm64 under qemu)

def test_edge_image_is_arm64_non_root_and_has_no_tensorflow(edge_image):
    config = json.loads(docker("image", "inspect", edge_image).stdout)[0]
    assert config["Architecture"] == "arm64" and config["Os"] == "linux"
    assert config["Config"]["User"] == "10001"
    probe = ("import importlib.util as u, json, os, platform; print(json.dumps([platform.machine(), os.getuid(), "
             "[m for m in ('tensorflow', 'tf_keras', 'tensorflow_hub') if u.find_spec(m)], "
             "bool(u.find_spec('ai_edge_litert'))]))")
    proc = docker("run", "--rm", "--network", "none", "--read-only", edge_image, "python", "-c", probe)
    machine, uid, tensorflow, litert = json.loads(proc.stdout.strip().splitlines()[-1])
    assert machine == "aarch64" and uid == 10001 and tensorflow == [] and litert


def test_edge_container_answers_like_x86_in_process(edge_image, real_int8, tmp_path):
    """`docker run -p 127.0.0.1:PORT:9080 -v DIR:/mnt/models:ro cassava-edge`, with a read-only root filesystem."""
    photos = edge_photos()
    container = Container(edge_image, ports=[9080], volumes=[f"{real_int8}:/mnt/models:ro"], tmpfs=["/tmp"]).start()
    try:
        container.wait_ready(9080, timeout=900)
        assert container.exec("touch", "/opt/cassava/x").returncode != 0, "the root filesystem should be read-only"
        assert container.exec("id", "-u").stdout.strip() == "10001"
        served = predictions(tmp_path / "edge.json", "--edge", container.url(9080), "--data", *photos,
                             "--batch-size", 8)
    finally:
        container.stop()
    reference = predictions(tmp_path / "x86.json", "--in-process", "--model", real_int8, "--data", *photos)
    delta = compare(served, reference)
    print(f"\nedge container (linux/arm64 under qemu) vs x86 in-process, int8 real model: "
          f"{len(served)}/{len(served)} same top-1, max |dp| = {delta:.2e}")
    assert delta < 0.02, f"probabilities differ by up to {delta}"


def test_edge_plain_manifest_matches_the_edge_container(edge_image, real_int8):
    """The edge-plain Deployment's args, env, ports, probes and mounts, applied to the real edge container."""
    spec, pod = rendered_container("overlays/edge-plain", "Deployment")
    assert spec["image"] == edge_image, "the manifest names the image `make images` builds"
    ports = declared_ports(spec)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts, tmpfs = [], []
    for mount in spec["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            tmpfs.append(f"{mount['mountPath']}:uid=10001,gid=0,mode=0770")
        else:
            assert "hostPath" in volume and mount.get("readOnly") is True
            mounts.append(f"{real_int8}:{mount['mountPath']}:ro")
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    container = Container(edge_image, ports=ports.values(), env=manifest_env(spec), volumes=mounts, tmpfs=tmpfs,
                          args=spec["args"]).start()
    try:
        container.wait_ready(ports["http"], timeout=900)
        check_probes(container, spec, ports)
        assert answers_ok(container.url(ports["metrics"]) + "/metrics", timeout=5)
        assert grpc_server_ready(container.url(ports["grpc"]).removeprefix("http://"))
        assert container.exec("id", "-u").stdout.strip() == str(pod["securityContext"]["runAsUser"])
    finally:
        container.stop()


BUNDLE_CLIENT = """import base64, json, sys, urllib.request
photo = base64.b64encode(open(sys.argv[1], "rb").read()).decode()
body = {"inputs": [{"name": "photos", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "base64"},
                    "data": [photo]}]}
request = urllib.request.Request("http://127.0.0.1:9080/v2/models/cassava/infer", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
print(json.dumps(json.load(urllib.request.urlopen(request, timeout=300))))
"""


def test_edge_bundle_installs_and_serves_offline_on_arm64(edge_image, real_int8, tmp_path):
    """`cassava bundle edge`, unpacked and installed in a bare Debian bookworm arm64 container with no network."""
    bundle = tmp_path / "cassava-edge.tar.gz"
    result = run_cli("bundle", "edge", "--platform", "linux/arm64", "--model", real_int8, "--out", bundle, timeout=900)
    assert result.returncode == 0, result.stderr
    base = subprocess.run([str(SCRIPTS / "base.sh"), "arm64"], capture_output=True, text=True, timeout=1800)
    assert base.returncode == 0, base.stderr
    photo = sorted(REAL_PHOTOS.rglob("*.jpg"))[0]
    # The device's own check, with nothing but the standard library: one photo, one V2 request on loopback.
    (tmp_path / "client.py").write_text(BUNDLE_CLIENT)
    script = f"""set -e
cd /tmp && tar xzf /bundle/{bundle.name}
./cassava-edge/install.sh /tmp/cassava
/tmp/cassava/bin/cassava serve edge --model /tmp/cassava/models > /tmp/serve.log 2>&1 &
for i in $(seq 1 600); do grep -q 'cassava (edge) on' /tmp/serve.log && break; sleep 1; done
grep 'cassava (edge) on' /tmp/serve.log || {{ cat /tmp/serve.log; exit 1; }}
/tmp/cassava/bin/python /bundle/client.py /photo.jpg
"""
    proc = docker("run", "--rm", "--network", "none", "--platform", "linux/arm64",
                  "-v", f"{tmp_path}:/bundle:ro", "-v", f"{photo}:/photo.jpg:ro",
                  base.stdout.split()[-1], "sh", "-c", script, timeout=2400, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    labels = next(o for o in answer["outputs"] if o["name"] == "labels")["data"]
    reference = predictions(tmp_path / "x86.json", "--in-process", "--model", real_int8, "--data", photo)
    assert labels == [next(iter(reference.values()))[0]]


# ----------------------------------------------------------------------------- cloud (linux/amd64)

def test_cloud_container_as_the_seldondeployment_runs_it(cloud_image, real_cloud_model, real_photos, tmp_path):
    """Env, ports and probes of the rendered SeldonDeployment on the real cloud container with the real model;
    `cassava predict --remote` through nginx playing the Seldon ingress answers like the model in-process."""

    spec, _ = rendered_container("cloud", "SeldonDeployment")
    assert spec["image"] == cloud_image, "the manifest names the image `make images` builds"
    ports = declared_ports(spec)
    env = {**manifest_env(spec), "MLSERVER_MODEL_URI": "/mnt/models"}
    container = Container(cloud_image, ports=ports.values(), env=env, volumes=[f"{real_cloud_model}:/mnt/models:ro"],
                          tmpfs=["/tmp"]).start()
    ingress = None
    try:
        container.wait_ready(ports["http"], timeout=600)
        check_probes(container, spec, ports)
        assert answers_ok(container.url(ports["metrics"]) + "/metrics", timeout=5)
        assert grpc_server_ready(container.url(ports["grpc"]).removeprefix("http://"))
        pre_stop = container.exec(*spec["lifecycle"]["preStop"]["exec"]["command"])
        assert pre_stop.returncode == 0, f"the preStop hook fails in the image: {pre_stop.stderr}"
        ingress = Nginx(tmp_path / "nginx", [SimpleNamespace(http_port=container.ports[ports["http"]])]).start()
        served = predictions(tmp_path / "remote.json", "--remote", f"{ingress.url}/seldon/default/cassava",
                             "--data", real_photos)
    finally:
        if ingress is not None:
            ingress.stop()
        container.stop()
    reference = predictions(tmp_path / "local.json", "--in-process", "--model", REAL_MODEL, "--input-scale", 255,
                            "--classes", ",".join(REAL_CLASSES), "--data", real_photos)
    delta = compare(served, reference)
    print(f"\ncloud container through nginx vs in-process, real model: {len(served)} photos same top-1, "
          f"max |dp| = {delta:.2e}")
    # The same float32 TensorFlow on the same pixels (the edge's bound, 0.02, is for int8 against float): only the
    # arithmetic order of two TF builds may differ.
    assert delta < 1e-4, f"probabilities differ by up to {delta}"


@pytest.fixture
def standin_container(cloud_image, standin_model):
    container = Container(cloud_image, ports=CLOUD_PORTS, env={"MLSERVER_MODEL_URI": "/mnt/models"},
                          volumes=[f"{standin_model}:/mnt/models:ro"], tmpfs=["/tmp"]).start()
    try:
        container.wait_ready(8080, timeout=600)
        yield container
    finally:
        container.stop()


def test_cloud_container_serves_the_standin(standin_container, standin_model, tmp_path):
    served = predictions(tmp_path / "c.json", "--local", standin_container.url(8080), "--data", "standin", n=32)
    reference = predictions(tmp_path / "p.json", "--in-process", "--model", standin_model, "--data", "standin", n=32)
    assert len(served) == 32
    assert compare(served, reference) < 1e-4  # the same float32 TensorFlow model on the same pixels


def test_sigterm_under_load_answers_every_accepted_request(standin_container, standin_data):
    """SIGTERM while 4 clients keep batches in flight: every request sent before the signal gets its answer.

    (In Kubernetes the preStop delay stops new requests from arriving before SIGTERM; requests sent after the
    signal may be refused, never cut off once accepted.)"""
    import http.client

    photos = sorted(standin_data.rglob("*.jpg"))[:16]
    body = json.dumps({"inputs": [{"name": "photos", "datatype": "BYTES", "shape": [len(photos)],
                                   "parameters": {"content_type": "base64"},
                                   "data": [base64.b64encode(p.read_bytes()).decode() for p in photos]}]}).encode()
    port = standin_container.ports[8080]
    signalled = threading.Event()
    signal_time = [float("inf")]
    outcomes, lock = [], threading.Lock()  # (time the request was fully sent, status, answers, time answered)

    def client():
        while not signalled.is_set():
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            sent = float("inf")
            try:
                connection.request("POST", "/v2/models/cassava/infer", body, {"content-type": "application/json"})
                sent = time.monotonic()  # the whole request is in the server's socket now
                response = connection.getresponse()
                data = response.read()
                answers = len(json.loads(data)["outputs"][0]["data"]) if response.status == 200 else 0
                outcome = (sent, response.status, answers, time.monotonic())
            except (OSError, http.client.HTTPException) as error:
                outcome = (sent, type(error).__name__, 0, time.monotonic())
            finally:
                connection.close()
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    while len(outcomes) < 8:
        time.sleep(0.05)
    signal_time[0] = time.monotonic()
    docker("kill", "--signal", "TERM", standin_container.name)
    signalled.set()
    for thread in threads:
        thread.join(180)
    before = [o for o in outcomes if o[0] < signal_time[0]]
    in_flight = [o for o in before if o[3] > signal_time[0]]
    assert in_flight, "no request was in flight when SIGTERM was sent: nothing was tested"
    dropped = [o for o in before if o[1] != 200 or o[2] != len(photos)]
    assert not dropped, f"{len(dropped)} of {len(before)} requests sent before SIGTERM were not answered: {dropped[:5]}"
    deadline = time.monotonic() + 60
    while standin_container.running() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not standin_container.running(), "the container did not exit after SIGTERM"
