"""The 1:N index's settings, shared by every backend (``index`` in memory, ``index_milvus``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from auth_service.shortlist import ENGINES

BACKENDS = ("memory", "milvus")


@dataclass(frozen=True)
class IndexConfig:
    """Tune the 1:N index: when to shortlist, which engine, which backend."""

    # Exact search never misses and needs no build, but at 100k templates it costs 4.3 ms
    # of a core per search, the IVF shortlist 0.4 ms with the same top subject in 500 of
    # 500 searches (benchmarks/identify_index.py). So a shortlist from 100k templates on.
    ann_min_templates: int = 100_000
    ann: str = "ivf"  # the shortlist engine: "ivf" (FAISS) or "hnsw" (usearch)
    shortlist: int = 128  # templates proposed by the engine, then re-scored exactly
    nprobe: int | None = None  # IVF lists scanned per search; None: a 32nd of them
    # HNSW search breadth: at 300k templates ef 128 missed the exact top subject in 11% of
    # searches, 512 in 2.4% at 1.7 ms (benchmarks/identify_index.py).
    ef_search: int = 512
    connectivity: int = 16
    ef_add: int = 128
    build_threads: int = max(1, (os.cpu_count() or 2) // 2)  # leave cores for searches
    rebuild_dead_fraction: float = 0.25  # compact and rebuild once this share is tombstones
    rebuild_growth: float = 2.0  # retrain once the gallery is this many times its trained size
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
        if self.ann not in ENGINES:
            raise ValueError(f"shortlist engine {self.ann!r}: want one of {', '.join(ENGINES)}")
