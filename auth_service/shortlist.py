"""Approximate shortlists for big galleries: FAISS IVF (default) or usearch HNSW.

A shortlist only proposes row numbers of a ``TemplateIndex``; the index re-scores them
exactly, so an approximate engine can miss a subject but never report a wrong score.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

ENGINES = ("ivf", "hnsw")
_TRAIN_PER_LIST = 64  # k-means training rows per list: 32 s for 4,096 lists on 2 cores


class Shortlist(Protocol):
    """An approximate inner-product index over (row number, unit vector) pairs."""

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, rows: np.ndarray) -> None: ...

    def search(self, probe: np.ndarray, k: int) -> np.ndarray: ...


def ivf_lists(n: int) -> int:
    """Return the number of IVF lists for ``n`` vectors: about 4 sqrt(n), a power of two."""
    target = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
    # k-means wants ~39 rows per centroid; tiny galleries get one list (a flat scan).
    return int(max(1, min(target, n // 39, 65_536)))


def default_nprobe(lists: int) -> int:
    """Return how many IVF lists a search scans by default: a 32nd of them, at least 16."""
    # A 32nd found the exact top subject in 998-1000 of 1,000 searches from 200k to 1M
    # templates; fewer lists scanned missed up to 4%.
    return max(16, lists // 32)


class IvfShortlist:
    """FAISS inverted lists over 8-bit scalar-quantized vectors (128 bytes a row).

    A probe is compared with every list centre, then with the rows of its ``nprobe``
    nearest lists. Unlike a graph walk, this does not get lost in a gallery whose
    strangers all look alike: at a million templates it found the exact top subject in
    every one of 1,000 searches (docs/measurements/identify-1m.md).
    """

    def __init__(self, rows: np.ndarray, vectors: np.ndarray, nprobe: int | None, threads: int):
        import faiss  # only galleries above ann_min_templates need it

        faiss.omp_set_num_threads(threads)  # this (build) thread's OpenMP team only
        dim = vectors.shape[1]
        lists = ivf_lists(len(rows))
        self._centres = faiss.IndexFlatIP(dim)  # the IVF keeps a reference, not a copy
        index = faiss.IndexIVFScalarQuantizer(
            self._centres, dim, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.min_points_per_centroid = 1  # ivf_lists already keeps lists well fed
        sample = min(len(rows), _TRAIN_PER_LIST * lists)
        picked = np.random.default_rng(0).choice(len(rows), sample, replace=False)
        index.train(vectors[np.sort(picked)])
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # O(1) removal by row number
        index.nprobe = nprobe or default_nprobe(lists)
        index.add_with_ids(vectors, rows.astype(np.int64))
        self._faiss, self._index = faiss, index
        self.description = f"IVF {lists} lists, nprobe {index.nprobe}, SQ8"

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Add rows to the lists of their nearest centres (the centres stay as trained)."""
        self._one_thread()
        self._index.add_with_ids(vectors, rows.astype(np.int64))

    def remove(self, rows: np.ndarray) -> None:
        """Drop rows; unknown ones are ignored."""
        ids = np.ascontiguousarray(rows, np.int64)
        self._one_thread()
        self._index.remove_ids(self._faiss.IDSelectorArray(len(ids), self._faiss.swig_ptr(ids)))

    def search(self, probe: np.ndarray, k: int) -> np.ndarray:
        """Return up to ``k`` row numbers, most similar first."""
        self._one_thread()
        _, ids = self._index.search(probe.reshape(1, -1), k)
        return ids[0][ids[0] >= 0]

    def _one_thread(self) -> None:
        # One query needs no OpenMP team, and a team's spinning threads took a busy core's
        # time: p99 4.8 ms against p50 0.4 ms at 100k. The setting is per calling thread.
        self._faiss.omp_set_num_threads(1)


class HnswShortlist:
    """A usearch HNSW graph over half-precision vectors.

    Kept for comparison: on galleries whose strangers all score alike the greedy walk
    misses the exact top subject in 1-9% of searches (docs/measurements/identify-1m.md).
    """

    def __init__(self, rows, vectors, *, connectivity: int, ef_add: int, ef_search: int):
        from usearch.index import Index

        self._graph = Index(
            ndim=vectors.shape[1],
            metric="ip",
            dtype="f16",
            connectivity=connectivity,
            expansion_add=ef_add,
            expansion_search=ef_search,
        )
        # One thread: a parallel build is not reproducible, and on tightly clustered data
        # some parallel builds here lost whole subjects from the graph.
        self._graph.add(rows.astype(np.uint64), vectors, threads=1)
        self.description = f"HNSW M {connectivity}, ef {ef_search}, f16"

    def set_ef_search(self, ef: int) -> None:
        """Change the search breadth without a rebuild."""
        self._graph.expansion_search = ef

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        """Link new rows into the graph."""
        self._graph.add(rows.astype(np.uint64), vectors)

    def remove(self, rows: np.ndarray) -> None:
        """Tombstone rows in the graph."""
        self._graph.remove(np.asarray(rows, np.uint64))

    def search(self, probe: np.ndarray, k: int) -> np.ndarray:
        """Return up to ``k`` row numbers, most similar first."""
        return np.asarray(self._graph.search(probe, k).keys, np.int64)
