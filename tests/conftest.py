"""Shared fixtures: sample faces; the data root (skipped when absent except in CI); a site."""

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
def sample_faces() -> Path:
    """Return the LFW sample faces the package ships (16 people, 24 photos, triplets.txt).

    Face tests run on these, so that a clone without the data root still tests the face
    pipeline; tests that need many identities use ``lfw_dir`` and the data root.
    """
    from edge_agent.assets import asset_path

    return asset_path("sample_faces")


@pytest.fixture(scope="session")
def sample_photos(sample_faces: Path) -> list[Path]:
    """Return every shipped sample photo, sorted by person and number."""
    return sorted(sample_faces.glob("*/*.jpg"))


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


@pytest.fixture(scope="session")
def postgres_server():
    """Start a throwaway PostgreSQL server on a free loopback port; yield its base URL."""
    from pg_kit import PostgresServer

    try:
        server = PostgresServer()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    server.start()
    try:
        yield server.url
    finally:
        server.remove()


@pytest.fixture
def postgres_url(postgres_server: str, request) -> str:
    """Return the URL of a fresh, empty database on the test server."""
    import psycopg

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:55]
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_server}/{name}"


@pytest.fixture
def site(tmp_path: Path):
    """Start a real loopback service on a fresh SQLite database (tests/authz_kit.py)."""
    from authz_kit import Site

    s = Site(tmp_path / "kfaar.db")
    yield s
    s.stop()


@pytest.fixture
def controllers():
    """Make door controllers that check grants (tests/door_kit.py); close them after."""
    from door_kit import Controller

    made: list[Controller] = []

    def make(*args, **kw) -> Controller:
        made.append(Controller(*args, **kw))
        return made[-1]

    yield make
    for c in made:
        c.close()
