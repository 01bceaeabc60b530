"""Progress bars for long jobs, on stderr so that stdout stays parseable, and console wording."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, desc: str = "", **kw) -> tqdm:
    """Wrap ``items`` in a tqdm bar on stderr, shown only when stderr is a terminal.

    ``KFAAR_NO_PROGRESS=1`` turns bars off everywhere. Bars vanish when they close; print
    lines while one is open with ``emit``, so that no bar is drawn into them.
    """
    # None: tqdm draws only on a terminal, so logs and pipes get no bar remnants.
    disable = True if os.environ.get("KFAAR_NO_PROGRESS") else None
    return tqdm(
        items,
        total=total,
        desc=desc,
        disable=disable,
        file=sys.stderr,
        mininterval=1.0,
        dynamic_ncols=True,
        leave=False,
        **kw,
    )


def emit(text: str) -> None:
    """Write ``text`` to stdout, clearing any open progress bar first and redrawing it after."""
    with tqdm.external_write_mode(file=sys.stdout):
        sys.stdout.write(text)
        sys.stdout.flush()


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """Return "1 face", "2 faces" (or the given plural form)."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"
