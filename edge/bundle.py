"""`cassava bundle edge`: one .tar.gz that installs and serves the edge tier on a device with no internet.

Made on a workstation with PyPI access: the wheels of `cassava-cloud-edge[edge]` for the device's platform (pip
download, binary wheels only, for the device's Python), this project's own wheel, a converted model and install.sh.
On the device (Raspberry Pi OS 64-bit bookworm: Python 3.11, python3-venv):

    tar xzf cassava-edge.tar.gz && ./cassava-edge/install.sh        # venv in ~/cassava, no network used
    ~/cassava/bin/cassava serve edge --model ~/cassava/models --host 0.0.0.0

The model is installed as the next version of the model store ~/cassava/models (1, then 2, ...: written under a
temporary name, then renamed), so installing a newer bundle beside a running server updates it without a restart.
"""
from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from cassava.shared.errors import CassavaError

DIST = "cassava-cloud-edge"
# Docker-style platform -> (platform_machine, pip platform tags). Bookworm's glibc is 2.36; pip does not widen a
# --platform tag to older glibc versions by itself, so every manylinux_2_X a bookworm device can load is listed.
PLATFORMS = {
    "linux/arm64": ("aarch64", [f"manylinux_2_{v}_aarch64" for v in range(17, 37)] + ["manylinux2014_aarch64"]),
    "linux/amd64": ("x86_64", [f"manylinux_2_{v}_x86_64" for v in range(17, 37)] + ["manylinux2014_x86_64"]),
}
# Keep in step with deploy/images/constraints-aarch64.txt: ai-edge-litert 2.x's aarch64 wheel crashes when creating
# an interpreter under qemu-user 7.2 (the aarch64 CPU this is tested on); 1.4.0 runs there.
PLATFORM_CONSTRAINTS = {"linux/arm64": ["ai-edge-litert<2"]}
UNSUPPORTED = {
    "linux/arm/v7": "PyPI has no armv7 wheels of numpy or ai-edge-litert (piwheels has some; see edge/README.md)",
}
INSTALL_SH = """#!/bin/sh
# Offline install of the cassava edge server from this bundle: ./install.sh [DIR]   (default: ~/cassava)
# Needs Python {python} with venv (Raspberry Pi OS bookworm: python3, python3-venv). Uses no network.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dest=${{1:-$HOME/cassava}}
python3 -c 'import sys; sys.exit(sys.version_info[:2] != ({major}, {minor}) and "this bundle needs Python {python}")'
python3 -m venv "$dest"
# --no-compile: Python compiles (and caches) only the modules the server imports, on first start: a faster install.
"$dest/bin/pip" install --no-index --find-links "$here/wheels" --disable-pip-version-check --no-compile -q \
    "{dist}[edge]"
# The model becomes the next version of the store $dest/models: a server watching it picks it up.
mkdir -p "$dest/models"
last=$(ls "$dest/models" | grep -E '^[0-9]+$' | sort -n | tail -n 1)
version=$((${{last:-0}} + 1))
rm -rf "$dest/models/.$version.tmp"
cp -R "$here/model" "$dest/models/.$version.tmp" && mv "$dest/models/.$version.tmp" "$dest/models/$version"
echo "installed in $dest (model version $version); serve with: $dest/bin/cassava serve edge --model $dest/models" \
     "--host 0.0.0.0"
"""


def add_arguments(parser):
    parser.add_argument("tier", choices=("edge",), help="edge: the TFLite server (the tier that runs on a device)")
    parser.add_argument("--platform", default="linux/arm64",
                        help="the device's platform (default linux/arm64: Raspberry Pi OS 64-bit; also linux/amd64)")
    parser.add_argument("--model", required=True, type=Path,
                        help="a folder made by `cassava convert` (model.tflite + cassava-model.json)")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE.tar.gz", help="the bundle to write")
    parser.add_argument("--python-version", default="3.11",
                        help="the device's Python (default 3.11, Raspberry Pi OS bookworm)")


def run(args) -> int:
    if args.platform in UNSUPPORTED:
        raise CassavaError(f"--platform {args.platform}: {UNSUPPORTED[args.platform]}")
    if args.platform not in PLATFORMS:
        raise CassavaError(f"--platform {args.platform}: not one of {', '.join(PLATFORMS)}")
    if not str(args.out).endswith(".tar.gz"):
        raise CassavaError(f"--out {args.out}: the bundle is a .tar.gz")
    major, minor = _python_version(args.python_version)
    files = _model_files(args.model)
    name = Path(str(args.out)[: -len(".tar.gz")]).name
    with tempfile.TemporaryDirectory(prefix="cassava-bundle-") as tmp:
        root = Path(tmp) / name
        (root / "model").mkdir(parents=True)
        for path in files:
            shutil.copy2(path, root / "model" / path.name)
        wheels = root / "wheels"
        _project_wheel(wheels)
        requirements = _requirements(PLATFORMS[args.platform][0]) + PLATFORM_CONSTRAINTS.get(args.platform, [])
        _download(requirements, args.platform, f"{major}.{minor}", wheels)
        install = root / "install.sh"
        install.write_text(INSTALL_SH.format(python=f"{major}.{minor}", major=major, minor=minor, dist=DIST))
        install.chmod(0o755)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(args.out, "w:gz") as tar:
            tar.add(root, arcname=name)
    print(f"{args.out}: {args.out.stat().st_size / 2**20:.1f} MB, {args.platform}, Python {major}.{minor}; "
          f"on the device: tar xzf {args.out.name} && ./{name}/install.sh", flush=True)
    return 0


def _python_version(text: str):
    try:
        major, minor = (int(part) for part in text.split("."))
    except ValueError:
        raise CassavaError(f"--python-version {text}: expected MAJOR.MINOR, e.g. 3.11") from None
    return major, minor


def _model_files(model: Path) -> list:
    """The converted model's files, after the device's own verification (a broken bundle is found here, not on the
    Pi): the device's store would refuse what fails it."""
    from cassava.shared.manifest import verify
    from cassava.shared.native import native_stderr_silenced
    from cassava.shared.spec import SPEC_FILE, TFLITE_FILE

    if not (model / TFLITE_FILE).is_file() or not (model / SPEC_FILE).is_file():
        raise CassavaError(f"--model {model}: expected a `cassava convert` folder with {TFLITE_FILE} and {SPEC_FILE}")
    with native_stderr_silenced(True):
        refusal = verify(model)
    if refusal:
        raise CassavaError(f"--model {model}: refused ({refusal})")
    return [path for path in sorted(model.iterdir()) if path.is_file()]


def _requirements(machine: str) -> list:
    """This install's dependencies and its `edge` extra, with markers evaluated for the device, not this machine."""
    from packaging.requirements import Requirement

    environment = {"platform_machine": machine, "sys_platform": "linux", "platform_system": "Linux"}
    chosen = []
    for text in importlib.metadata.requires(DIST) or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({**environment, "extra": "edge"}):
            requirement.marker = None  # pip download would evaluate it for this machine
            chosen.append(str(requirement))
    return chosen


def _project_wheel(wheels: Path) -> None:
    """This project's own wheel: built from the checkout this command runs from, else the released one from PyPI."""
    source = _source_root()
    if source is not None:
        command = ["wheel", "--no-deps", "-w", str(wheels), str(source)]
    else:
        command = ["download", "--no-deps", "-d", str(wheels), f"{DIST}=={importlib.metadata.version(DIST)}"]
    _pip(command, f"cannot get the {DIST} wheel")


def _source_root():
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").is_file() and (here / "edge" / "bundle.py").is_file() else None


def _download(requirements: list, platform: str, python: str, wheels: Path) -> None:
    tags = [arg for tag in PLATFORMS[platform][1] for arg in ("--platform", tag)]
    _pip(["download", "-q", "-d", str(wheels), "--only-binary=:all:", "--python-version", python,
          "--implementation", "cp", *tags, "--platform", "any", *requirements],
         f"cannot download the wheels for {platform} (PyPI reachable?)")


def _pip(arguments: list, failure: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *arguments],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")] or proc.stderr.splitlines()[-1:]
        raise CassavaError(f"{failure}: {lines[-1] if lines else 'pip failed'}")
