"""Block-diagonal random rotations: the projector's keyed map, in numpy alone."""

from __future__ import annotations

import numpy as np


def band_rotation(bands: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Return a Haar-random block-diagonal rotation, one orthogonal block per band."""
    size = sum(bands)
    out = np.zeros((size, size), np.float32)
    start = 0
    for n in bands:
        q, r = np.linalg.qr(rng.standard_normal((n, n)))
        out[start : start + n, start : start + n] = q * np.sign(np.diag(r))
        start += n
    return out
