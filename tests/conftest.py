"""Session-wide fixtures: the stand-in model is built once per run (and cached across runs in CASSAVA_CACHE)."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import REAL_MODEL, REAL_PHOTOS, require_shared


@pytest.fixture(scope="session")
def standin_model() -> Path:
    from cassava.cloud.standin import ensure_standin

    return ensure_standin()


@pytest.fixture(scope="session")
def standin_data(standin_model) -> Path:
    from cassava.shared.cache import standin_data_dir

    return standin_data_dir("validation")


@pytest.fixture(scope="session")
def real_photos() -> Path:
    require_shared(REAL_PHOTOS)
    return REAL_PHOTOS


@pytest.fixture(scope="session")
def real_model() -> Path:
    require_shared(REAL_MODEL)
    return REAL_MODEL
