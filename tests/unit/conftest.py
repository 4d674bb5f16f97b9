"""In-process unit tests: no server processes, no containers (`make test-unit` runs this folder alone)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture
def photo_folder(tmp_path):
    """-> make(counts): a folder with one sub-folder per class holding that many small, distinct PNG files."""
    def make(counts: dict, name: str = "photos"):
        root = tmp_path / name
        for label, count in counts.items():
            (root / label).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (12, 12), (i * 9 % 256, len(label) * 20, 40)).save(root / label / f"{label}-{i}.png")
        return root
    return make


@pytest.fixture(scope="session")
def standin_tflite(standin_model) -> Path:
    """An int8 `cassava convert` copy of the stand-in, converted in this process once and cached in CASSAVA_CACHE
    (beside the stand-in it was made from, so a new stand-in gets a new copy)."""
    from cassava.cli import main
    from cassava.shared.cache import build_lock, standin_dir

    target = standin_dir() / "unit-test-int8"
    if (target / "model.tflite").is_file():
        return target
    with build_lock("unit-test-int8"):
        if not (target / "model.tflite").is_file():
            staging = target.with_name(target.name + ".tmp")
            shutil.rmtree(staging, ignore_errors=True)
            code = main(["convert", "--model", "standin", "--quantize", "int8", "--samples", "100",
                         "--verify-samples", "60", "--quiet", "--out", str(staging)])
            assert code == 0, "cassava convert of the stand-in failed (its error is above)"
            staging.rename(target)
    return target
