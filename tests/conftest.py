"""Shared fixtures: the configurable data root, skipped when absent except under CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from training.datasets import DATA_ROOT_ENV, data_root

REQUIRE_DATA_ENV = "KFAAR_REQUIRE_DATA"


def _require(path: Path, what: str) -> Path:
    if path.exists():
        return path
    reason = f"{what} not found at {path} (set ${DATA_ROOT_ENV})"
    if os.environ.get(REQUIRE_DATA_ENV):
        pytest.fail(f"{reason}; ${REQUIRE_DATA_ENV} is set, so missing data is a failure")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Return the data root holding lfw/, att_faces/ and splits/."""
    return _require(data_root(), "data root")


@pytest.fixture(scope="session")
def lfw_dir(data_dir: Path) -> Path:
    return _require(data_dir / "lfw", "LFW folder")


@pytest.fixture(scope="session")
def att_dir(data_dir: Path) -> Path:
    return _require(data_dir / "att_faces", "AT&T faces folder")


@pytest.fixture(scope="session")
def splits_dir(data_dir: Path) -> Path:
    return _require(data_dir / "splits", "splits folder")
