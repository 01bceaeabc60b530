"""Locate files shipped inside the installed package, and the cache for built ones."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "KFAAR_CACHE_DIR"
_PACKAGES = Path(__file__).resolve().parent.parent


def asset_path(name: str, package: str = "edge_agent") -> Path:
    """Return the path of a packaged asset, failing clearly when it is missing."""
    path = _PACKAGES / package / "assets" / name
    if not path.exists():
        raise FileNotFoundError(f"packaged asset {name!r} not found at {path}")
    return path


def cache_dir() -> Path:
    """Return the cache folder for artifacts built on first use (``$KFAAR_CACHE_DIR``)."""
    root = os.environ.get(CACHE_ENV)
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "kfaar"
    path.mkdir(parents=True, exist_ok=True)
    return path
