"""In-process unit tests: no server processes, no containers (`make test-unit` runs this folder alone)."""
from __future__ import annotations

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
    from cassava.shared.cache import built_once, standin_dir
    from cassava.shared.spec import CONVERTED_LAYOUT

    def convert(folder: Path) -> None:
        code = main(["convert", "--model", "standin", "--quantize", "int8", "--plain", "--samples", "100",
                     "--verify-samples", "60", "--quiet", "--out", str(folder)])
        assert code == 0, "cassava convert of the stand-in failed (its error is above)"

    return built_once(standin_dir() / f"unit-test-int8-{CONVERTED_LAYOUT}", "unit-test-int8", convert,
                      "converting the stand-in to int8 for the unit tests ...", lambda folder: f"{folder} ready")
