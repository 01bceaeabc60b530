"""The judge-embedding cache: reused for the same face, refreshed when file or face moves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edge_agent.face.detect import Face
from training.evaluation.cache import embed_cached
from training.evaluation.judges import FaceRef, Judge


class MeanColourJudge(Judge):
    """A trivial but real judge: the mean colour inside the box; counts its work."""

    cache_id = "mean-colour"

    def __init__(self) -> None:
        self.embedded = 0

    def embed(self, items, desc: str = "") -> np.ndarray:
        self.embedded += len(items)
        out = []
        for image, ref in items:
            left, top, right, bottom = ref.dlib_box
            out.append(image[top:bottom, left:right].reshape(-1, 3).mean(0))
        return np.array(out, np.float32)


def ref_at(x: int) -> FaceRef:
    face = Face((x, 2.0, 6.0, 6.0), np.full((5, 2), x, np.float32), 0.9)
    return FaceRef(face, (x, 2, x + 6, 8), True)


def test_cache_reuses_and_invalidates(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
    file = tmp_path / "face.png"
    file.write_bytes(b"stand-in for the encoded image")
    db = tmp_path / "cache.sqlite"
    judge = MeanColourJudge()

    first = embed_cached(judge, [file], [(image, ref_at(1))], db)
    again = embed_cached(judge, [file], [(image, ref_at(1))], db)
    assert judge.embedded == 1
    np.testing.assert_array_equal(first, again)

    moved = embed_cached(judge, [file], [(image, ref_at(4))], db)  # the face moved
    assert judge.embedded == 2 and not np.allclose(moved, first)

    os.utime(file, ns=(1, 1))  # the file changed
    embed_cached(judge, [file], [(image, ref_at(1))], db)
    assert judge.embedded == 3

    embed_cached(judge, [file], [(image, ref_at(1))], None)  # caching off
    assert judge.embedded == 4
