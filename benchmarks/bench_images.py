"""Container images and the edge footprint: image sizes, the edge server's whole process tree RSS (native, real
model), and the edge container's memory under qemu (linux/arm64 emulated on this x86 machine).

The footprint that counts is the edge as a device runs it: installed with the `[edge]` extra only, as
`cassava bundle edge` and the edge image install it (a venv made once in $CASSAVA_CACHE). The development venv is
measured beside it: with every extra installed, MLServer's `import pandas` also loads pyarrow (~30 MB more).

The images come from deploy/images/build.sh (as `make images`; cached builds are quick). The int8 model is the
third-party model in ../shared converted like the README says; without ../shared the stand-in is used and says so.

    python benchmarks/bench_images.py
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from cassava.shared.server.process import free_port
from cassava.shared.server.process import wait_ready as answered
from cassava.testing import process_tree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import REAL_MODEL, REAL_PHOTOS, REPO, real_tflite, standin_tflite  # noqa: E402

BIN = Path(sys.executable).parent
DOCKER = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else "docker"
TARGET_TREE_MB = 220


def wait_ready(url: str, timeout: float, process=None) -> None:
    if not answered(url, process, timeout):
        raise TimeoutError(f"{url} not ready after {timeout:.0f} s")


def int8_model() -> tuple:
    """(converted dir, description): the real model's int8 copy when ../shared exists, else the stand-in's."""
    if REAL_MODEL.exists():
        return real_tflite("int8"), "int8 copy of the third-party cassava-cnn-256"
    return standin_tflite("int8"), "int8 stand-in (stand-in model, synthetic data)"


def classify(url: str, data) -> None:
    subprocess.run([str(BIN / "cassava"), "predict", "--edge", url, "--data", str(data), "-n", "0", "--quiet"],
                   check=True, capture_output=True, timeout=1800)


def edge_only_bin() -> Path:
    """bin/ of a venv with this checkout and the `[edge]` extra only (editable, so it runs the current code)."""
    from cassava.shared.cache import cache_dir

    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    venv = cache_dir() / f"bench-edge-venv-{key}"
    if not (venv / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "-e",
                        f"{REPO}[edge]"], check=True, capture_output=True)
        (venv / ".installed").touch()
    return venv / "bin"


def native_edge_tree(model: Path, data, bin_dir: Path = BIN) -> dict:
    """`cassava serve edge` from BIN_DIR on this machine: the command and everything it started."""
    ports = [free_port() for _ in range(3)]
    process = subprocess.Popen([str(bin_dir / "cassava"), "serve", "edge", "--model", str(model),
                                "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
                                "--metrics-port", str(ports[2])],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{ports[0]}"
        wait_ready(f"{url}/v2/models/cassava/ready", 300, process)
        ready, _ = process_tree(process.pid)
        classify(url, data)
        served, processes = process_tree(process.pid)
    finally:
        process.terminate()
        process.wait(60)
    return {"ready_mb": ready, "served_mb": served, "processes": processes}


def build(tier: str) -> str:
    proc = subprocess.run([str(REPO / "deploy" / "images" / "build.sh"), tier], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})
    if proc.returncode != 0:
        raise RuntimeError(f"build.sh {tier} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout.split()[-1]


def image_mb(image: str) -> float:
    return int(subprocess.run([DOCKER, "image", "inspect", "-f", "{{.Size}}", image], capture_output=True, text=True,
                              check=True).stdout) / 1e6


def edge_container_mb(image: str, model: Path, data) -> float:
    """Memory of the running edge container (cgroup v1 usage minus page cache) after answering `data`, under qemu."""
    port = free_port()
    name = f"cassava-bench-{port}"
    subprocess.run([DOCKER, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:9080",
                    "-v", f"{model}:/mnt/models:ro", "--read-only", "--tmpfs", "/tmp", image],
                   check=True, capture_output=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/v2/models/cassava/ready", 900)
        classify(url, data)
        stats = subprocess.run([DOCKER, "exec", name, "cat", "/sys/fs/cgroup/memory/memory.stat"], capture_output=True,
                               text=True, check=True).stdout
        values = dict(line.split() for line in stats.splitlines())
        return int(values["total_rss"]) / 2**20
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], capture_output=True)


def main() -> dict:
    model, what = int8_model()
    data = REAL_PHOTOS if REAL_PHOTOS.exists() else "standin"
    tree = native_edge_tree(model, data, edge_only_bin())
    dev_tree = native_edge_tree(model, data)
    cloud, edge = build("cloud"), build("edge")
    sizes = {cloud: image_mb(cloud), edge: image_mb(edge)}
    container = edge_container_mb(edge, model, data)
    print(f"model: {what}; photos: {data}")
    print(f"`cassava serve edge` process tree ({tree['processes']} processes), x86, [edge] extra only: "
          f"{tree['ready_mb']:.0f} MB RSS when ready, {tree['served_mb']:.0f} MB after classifying the photos "
          f"(target ≤ {TARGET_TREE_MB} MB)")
    print(f"the same from the development venv (every extra; pandas loads pyarrow): {dev_tree['ready_mb']:.0f} MB "
          f"ready, {dev_tree['served_mb']:.0f} MB after the photos")
    for image, size in sizes.items():
        print(f"image {image}: {size:.0f} MB")
    print(f"edge container (linux/arm64 under qemu-user, memory includes the emulator's): {container:.0f} MB RSS "
          "after the photos")
    return {
        "model": what, "sizes_mb": sizes, "tree": tree, "dev_tree": dev_tree, "edge_container_qemu_mb": container,
        "ratios": [
            {"name": f"edge process tree RSS after the photos, x86, [edge] extra only ({what}; "
                     f"{tree['ready_mb']:.0f} MB when ready)",
             "value": tree["served_mb"], "target": TARGET_TREE_MB, "better": "lower", "unit": " MB"},
            {"name": "the same from the development venv (all extras: pandas also loads pyarrow)",
             "value": dev_tree["served_mb"], "target": None, "unit": " MB"},
            {"name": "cloud image size", "value": sizes[cloud], "target": None, "unit": " MB"},
            {"name": "edge image size (linux/arm64)", "value": sizes[edge], "target": None, "unit": " MB"},
            {"name": "edge container RSS under qemu (arm64 emulated; not a Pi measurement)", "value": container,
             "target": None, "unit": " MB"},
        ],
    }


if __name__ == "__main__":
    main()
