"""Progress bars for long jobs, on stderr so that stdout stays parseable."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, desc: str = "", **kw) -> tqdm:
    """Wrap ``items`` in a tqdm bar; ``KFAAR_NO_PROGRESS=1`` turns bars off."""
    disable = bool(os.environ.get("KFAAR_NO_PROGRESS"))
    return tqdm(
        items,
        total=total,
        desc=desc,
        disable=disable,
        mininterval=1.0,
        dynamic_ncols=True,
        leave=False,
        **kw,
    )
