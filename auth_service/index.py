"""The 1:N index: exact search for small galleries, above them a shortlist re-scored exactly."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Protocol

import numpy as np

from auth_service.index_config import BACKENDS, IndexConfig
from auth_service.shortlist import HnswShortlist, IvfShortlist, Shortlist
from auth_service.store import EMBED_DIM, Gallery

__all__ = ["BACKENDS", "IndexConfig", "SearchIndex", "TemplateIndex", "build_index"]

log = logging.getLogger(__name__)


class SearchIndex(Protocol):
    """What the servicer needs of a 1:N index, whichever the backend."""

    def __len__(self) -> int: ...

    @property
    def uses_shortlist(self) -> bool: ...

    def add(self, subject: str, vectors: np.ndarray) -> None: ...

    def remove(self, subject: str) -> int: ...

    def replace(self, subject: str, vectors: np.ndarray) -> None: ...

    def search(
        self, probe: np.ndarray, threshold: float, top_k: int
    ) -> list[tuple[float, str]]: ...


def build_index(gallery: Gallery, config: IndexConfig, name: str, wait: bool = True) -> SearchIndex:
    """Build the configured backend's index of ``gallery``; ``name`` is model/space/scope.

    ``wait=False`` returns an in-process index at once, searching exactly until its
    shortlist is built in the background (about a minute at a million templates).
    """
    if config.backend == "milvus":
        from auth_service.index_milvus import MilvusIndex  # pymilvus only when asked for

        return MilvusIndex.from_gallery(gallery, config, name)
    return TemplateIndex.from_gallery(gallery, config, wait=wait)


class TemplateIndex:
    """All templates of one model version and space, searchable by cosine.

    Rows are only appended; revoked rows become tombstones so that adds and removals stay
    cheap, and rows are compacted once too many are dead. The exact vectors are always
    kept: a shortlist engine only proposes rows, the exact score decides. Shortlists are
    built in a background thread; searches stay exact (and correct) until one is ready.
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
        self._shortlist: Shortlist | None = None
        self._trained_size = 0  # live rows when the shortlist was built
        self._generation = 0  # bumped whenever row numbers change (compaction)
        self._builder: threading.Thread | None = None
        self._built = threading.Event()  # set whenever no build is running
        self._built.set()
        self._build_failed = False  # then wait for growth or compaction to try again

    @classmethod
    def from_gallery(
        cls, gallery: Gallery, config: IndexConfig | None = None, wait: bool = True
    ) -> TemplateIndex:
        """Build an index from a store's gallery in one pass; ``wait`` for its shortlist."""
        index = cls(config)
        n = len(gallery.subjects)
        index._grow(n + max(1024, n // 4))  # headroom: the next enrollments copy nothing
        index._vectors[:n] = np.asarray(gallery.vectors, np.float32).reshape(n, EMBED_DIM)
        index._alive[:n] = True
        index._subjects = list(gallery.subjects)
        index._n = index._live = n
        index._map_rows()
        with index._lock:
            index._plan_shortlist()
        if wait:
            index.wait_for_shortlist()
        return index

    def __len__(self) -> int:
        return self._live

    @property
    def uses_shortlist(self) -> bool:
        """Whether searches go through an approximate shortlist (else exact)."""
        return self._shortlist is not None

    @property
    def building(self) -> bool:
        """Whether a shortlist is being built (searches are exact until it is in)."""
        return self._builder is not None

    def wait_for_shortlist(self, timeout: float | None = None) -> bool:
        """Wait until no shortlist build is running; return False on timeout."""
        return self._built.wait(timeout)

    def set_ef_search(self, ef: int) -> None:
        """Change the HNSW search breadth (recall against speed) without a rebuild."""
        with self._lock:
            self.config = dataclasses.replace(self.config, ef_search=ef)
            if isinstance(self._shortlist, HnswShortlist):
                self._shortlist.set_ef_search(ef)

    def add(self, subject: str, vectors: np.ndarray) -> None:
        """Add a subject's unit vectors (M, 128)."""
        with self._lock:
            self._add(subject, vectors)
            self._plan_shortlist()

    def remove(self, subject: str) -> int:
        """Drop every template of a subject; return how many there were."""
        with self._lock:
            removed = self._remove(subject)
            self._plan_shortlist()
            return removed

    def replace(self, subject: str, vectors: np.ndarray) -> None:
        """Make a subject's templates exactly ``vectors`` (M, 128), in one step for searches."""
        with self._lock:
            self._remove(subject)
            self._add(subject, vectors)
            self._plan_shortlist()

    def search(self, probe: np.ndarray, threshold: float, top_k: int) -> list[tuple[float, str]]:
        """Return up to ``top_k`` (score, subject) at or above ``threshold``, best first."""
        with self._lock:
            if self._shortlist is None:
                rows = np.arange(self._n)
                scores = np.where(self._alive[: self._n], self._vectors[: self._n] @ probe, -2.0)
            else:
                rows = self._shortlist.search(probe, self.config.shortlist)
                # The exact score decides, not the engine's; tombstones never match.
                scores = np.where(self._alive[rows], self._vectors[rows] @ probe, -2.0)
            best: dict[str, float] = {}
            for i in np.flatnonzero(scores >= threshold):  # usually a handful of templates
                s = self._subjects[rows[i]]
                best[s] = max(best.get(s, -1.0), float(scores[i]))
        return sorted(((sc, s) for s, sc in best.items()), reverse=True)[:top_k]

    def _add(self, subject: str, vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, np.float32).reshape(-1, EMBED_DIM)
        if not len(vectors):
            return  # a subject replaced by nothing is gone, not an empty entry
        start, end = self._n, self._n + len(vectors)
        self._grow(end)
        self._vectors[start:end] = vectors
        self._alive[start:end] = True
        self._subjects.extend([subject] * len(vectors))
        self._rows_of.setdefault(subject, []).extend(range(start, end))
        self._n = end
        self._live += len(vectors)
        if self._shortlist is not None:
            self._shortlist.add(np.arange(start, end), vectors)

    def _remove(self, subject: str) -> int:
        rows = self._rows_of.pop(subject, [])
        if rows:
            self._alive[rows] = False
            self._live -= len(rows)
            if self._shortlist is not None:
                self._shortlist.remove(np.asarray(rows))
        return len(rows)

    def _plan_shortlist(self) -> None:
        """Compact, drop or (re)build the shortlist as the gallery's size asks; hold the lock."""
        c = self.config
        if self._n and 1 - len(self) / self._n >= c.rebuild_dead_fraction:
            self._compact()  # row numbers change, so the shortlist must be rebuilt
        if len(self) < c.ann_min_templates:
            self._shortlist = None
        elif (self._shortlist is None and not self._build_failed) or (
            len(self) >= c.rebuild_growth * self._trained_size
        ):
            self._start_build()

    def _start_build(self) -> None:
        if self._builder is not None:
            return  # the running build catches up with later writes when it installs
        self._built.clear()
        snapshot = (self._generation, self._n, self._vectors, self._alive[: self._n].copy())
        self._builder = threading.Thread(
            target=self._build, args=snapshot, name="kfaar-index-build", daemon=True
        )
        self._builder.start()

    def _build(self, generation: int, n: int, vectors: np.ndarray, alive: np.ndarray) -> None:
        """Build a shortlist of a snapshot without the lock, then catch up and install it."""
        # Rows below n never change in place and a grown array is a copy, so the snapshot
        # stays valid while writers go on.
        t0 = time.perf_counter()
        rows = np.flatnonzero(alive)
        try:
            shortlist = self._new_shortlist(rows, vectors[rows])
        except Exception:  # searches stay exact: slower, never wrong
            log.exception("building the 1:N shortlist over %d templates failed", len(rows))
            shortlist = None
        with self._lock:
            self._builder = None
            self._build_failed = shortlist is None
            if shortlist is None:
                self._trained_size = len(rows)
            elif generation == self._generation:  # else compacted meanwhile: rows renumbered
                self._install(shortlist, n, rows)
                log.info(
                    "built the 1:N shortlist (%s) over %d templates in %.1f s",
                    shortlist.description, len(rows), time.perf_counter() - t0,
                )  # fmt: skip
            self._plan_shortlist()  # a new build on new rows, or drop a shrunk gallery's
            if self._builder is None:
                self._built.set()

    def _install(self, shortlist: Shortlist, n: int, rows: np.ndarray) -> None:
        """Catch a shortlist of rows below ``n`` up with later writes and serve from it."""
        later = n + np.flatnonzero(self._alive[n : self._n])
        if len(later):
            shortlist.add(later, self._vectors[later])
        gone = rows[~self._alive[rows]]
        if len(gone):
            shortlist.remove(gone)
        self._shortlist, self._trained_size = shortlist, len(rows)

    def _new_shortlist(self, rows: np.ndarray, vectors: np.ndarray) -> Shortlist:
        c = self.config
        if c.ann == "hnsw":
            return HnswShortlist(
                rows, vectors, connectivity=c.connectivity, ef_add=c.ef_add, ef_search=c.ef_search
            )
        return IvfShortlist(rows, vectors, c.nprobe, c.build_threads)

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
        self._shortlist, self._trained_size, self._build_failed = None, 0, False
        self._generation += 1

    def _map_rows(self) -> None:
        self._rows_of = {}
        for row, s in enumerate(self._subjects):
            self._rows_of.setdefault(s, []).append(row)
