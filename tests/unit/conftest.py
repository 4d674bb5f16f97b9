"""In-process unit tests: no server processes, no containers (`make test-unit` runs this folder alone)."""
from __future__ import annotations

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
