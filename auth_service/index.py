"""The 1:N index: exact search for small galleries, an HNSW shortlist re-scored exactly above."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from auth_service.store import EMBED_DIM, Gallery

log = logging.getLogger(__name__)

BACKENDS = ("memory", "milvus")


@dataclass(frozen=True)
class IndexConfig:
    # Exact search costs 1.3 ms at 100k templates and 5.2 ms at 300k on a 2-core CPU, and
    # never misses; the graph is 3x faster at 300k but misses the exact top subject in 2-3%
    # of searches there (benchmarks/identify_index.py). So exact search up to a million.
    ann_min_templates: int = 1_000_000
    shortlist: int = 128  # templates taken from the graph, then re-scored exactly
    # Search breadth: at 300k templates ef 128 missed the exact top subject in 11% of
    # searches, 512 in 2.4% at 1.7 ms (benchmarks/identify_index.py).
    ef_search: int = 512
    connectivity: int = 16
    ef_add: int = 128
    rebuild_dead_fraction: float = 0.25  # rebuild the graph once this share is tombstones
    # "memory": this process's own index (above); "milvus": a Milvus collection shared by
    # every replica (auth_service/index_milvus.py), at milvus_uri (FILE.db or http://HOST:PORT).
    backend: str = "memory"
    milvus_uri: str | None = None
    # Milvus Lite's FAISS HNSW (M 16, its build params fixed) found the exact top subject
    # in 95.5% of searches at ef 512, 98.5% at 1024, 99.5% at 2048, at the same latency
    # (200k clustered templates, benchmarks/identify_1m.py).
    milvus_ef: int = 2048

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"index backend {self.backend!r}: want one of {', '.join(BACKENDS)}")


class SearchIndex(Protocol):
    """What the servicer needs of a 1:N index, whichever the backend."""

    def __len__(self) -> int: ...

    @property
    def uses_graph(self) -> bool: ...

    def add(self, subject: str, vectors: np.ndarray) -> None: ...

    def remove(self, subject: str) -> int: ...

    def search(
        self, probe: np.ndarray, threshold: float, top_k: int
    ) -> list[tuple[float, str]]: ...


def build_index(gallery: Gallery, config: IndexConfig, name: str) -> SearchIndex:
    """Build the configured backend's index of ``gallery``; ``name`` is model/space/scope."""
    if config.backend == "milvus":
        from auth_service.index_milvus import MilvusIndex  # pymilvus only when asked for

        return MilvusIndex.from_gallery(gallery, config, name)
    return TemplateIndex.from_gallery(gallery, config)


class TemplateIndex:
    """All templates of one model version and space, searchable by cosine.

    Rows are only appended; revoked rows become tombstones so that adds and removals stay
    cheap, and the graph is rebuilt once too many rows are dead. The exact vectors are
    always kept: the graph (half precision) only proposes, the exact score decides.
    """

    def __init__(self, config: IndexConfig | None = None) -> None:
        self.config = config or IndexConfig()
        self._lock = threading.Lock()
        self._vectors = np.zeros((0, EMBED_DIM), np.float32)
        self._n = 0  # rows in use in _vectors (the rest is spare capacity)
        self._live = 0  # rows in use that are not tombstones
        self._subjects: list[str] = []
        self._alive = np.zeros(0, bool)
        self._rows_of: dict[str, list[int]] = {}
        self._graph = None  # usearch.index.Index over live rows, or None for exact search

    @classmethod
    def from_gallery(cls, gallery: Gallery, config: IndexConfig | None = None) -> TemplateIndex:
        """Build an index from a store's gallery in one pass."""
        index = cls(config)
        n = len(gallery.subjects)
        index._grow(n + max(1024, n // 4))  # headroom: the next enrollments copy nothing
        index._vectors[:n] = np.asarray(gallery.vectors, np.float32).reshape(n, EMBED_DIM)
        index._alive[:n] = True
        index._subjects = list(gallery.subjects)
        index._n = index._live = n
        index._map_rows()
        if n >= index.config.ann_min_templates:
            index._build_graph()
        return index

    def __len__(self) -> int:
        return self._live

    @property
    def uses_graph(self) -> bool:
        return self._graph is not None

    def set_ef_search(self, ef: int) -> None:
        """Change the graph's search breadth (recall against speed) without a rebuild."""
        with self._lock:
            self.config = dataclasses.replace(self.config, ef_search=ef)
            if self._graph is not None:
                self._graph.expansion_search = ef

    def add(self, subject: str, vectors: np.ndarray) -> None:
        """Add a subject's unit vectors (M, 128)."""
        vectors = np.asarray(vectors, np.float32).reshape(-1, EMBED_DIM)
        with self._lock:
            start, end = self._n, self._n + len(vectors)
            self._grow(end)
            self._vectors[start:end] = vectors
            self._alive[start:end] = True
            self._subjects.extend([subject] * len(vectors))
            self._rows_of.setdefault(subject, []).extend(range(start, end))
            self._n = end
            self._live += len(vectors)
            if self._graph is not None:
                self._graph.add(np.arange(start, end, dtype=np.uint64), vectors)
            elif len(self) >= self.config.ann_min_templates:
                self._build_graph()

    def remove(self, subject: str) -> int:
        """Drop every template of a subject; return how many there were."""
        with self._lock:
            rows = self._rows_of.pop(subject, [])
            if not rows:
                return 0
            self._alive[rows] = False
            self._live -= len(rows)
            if self._graph is not None:
                self._graph.remove(np.asarray(rows, np.uint64))
            if 1 - len(self) / self._n >= self.config.rebuild_dead_fraction:
                self._compact()  # row numbers change, so a graph must be rebuilt
                self._graph = None
            if self._graph is None and len(self) >= self.config.ann_min_templates:
                self._build_graph()
            elif len(self) < self.config.ann_min_templates:
                self._graph = None
            return len(rows)

    def search(self, probe: np.ndarray, threshold: float, top_k: int) -> list[tuple[float, str]]:
        """Return up to ``top_k`` (score, subject) at or above ``threshold``, best first."""
        with self._lock:
            if self._graph is None:
                rows = np.arange(self._n)
                scores = np.where(self._alive[: self._n], self._vectors[: self._n] @ probe, -2.0)
            else:
                rows = np.asarray(self._graph.search(probe, self.config.shortlist).keys, np.int64)
                scores = self._vectors[rows] @ probe  # the exact score decides, not the graph's
            best: dict[str, float] = {}
            for i in np.flatnonzero(scores >= threshold):  # usually a handful of templates
                s = self._subjects[rows[i]]
                best[s] = max(best.get(s, -1.0), float(scores[i]))
        return sorted(((sc, s) for s, sc in best.items()), reverse=True)[:top_k]

    def _grow(self, size: int) -> None:
        if size <= len(self._vectors):
            return
        capacity = max(size, 2 * len(self._vectors), 1024)  # doubling: amortized O(1) adds
        vectors = np.zeros((capacity, EMBED_DIM), np.float32)
        vectors[: self._n] = self._vectors[: self._n]
        alive = np.zeros(capacity, bool)
        alive[: self._n] = self._alive[: self._n]
        self._vectors, self._alive = vectors, alive

    def _compact(self) -> None:
        """Drop tombstones so row numbers are dense again."""
        keep = np.flatnonzero(self._alive[: self._n])
        self._vectors = self._vectors[keep].copy()
        self._alive = np.ones(len(keep), bool)
        self._subjects = [self._subjects[i] for i in keep]
        self._n = len(keep)
        self._map_rows()

    def _map_rows(self) -> None:
        self._rows_of = {}
        for row, s in enumerate(self._subjects):
            self._rows_of.setdefault(s, []).append(row)

    def _build_graph(self) -> None:
        from usearch.index import Index  # only galleries above ann_min_templates need it

        c = self.config
        t0 = time.perf_counter()
        graph = Index(
            ndim=EMBED_DIM,
            metric="ip",
            dtype="f16",
            connectivity=c.connectivity,
            expansion_add=c.ef_add,
            expansion_search=c.ef_search,
        )
        live = np.flatnonzero(self._alive[: self._n])
        # One thread: a parallel build is not reproducible, and on tightly clustered data
        # some parallel builds here lost whole subjects from the graph (tests/test_index.py).
        graph.add(live.astype(np.uint64), self._vectors[live], threads=1)
        self._graph = graph
        log.info("built HNSW over %d templates in %.1f s", len(live), time.perf_counter() - t0)
