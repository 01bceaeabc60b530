"""A small on-disk cache of judge embeddings of original images, keyed by file and face."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from edge_agent.assets import cache_dir


def default_cache_path() -> Path:
    """Return the judge-embedding cache shared by ``kfaar eval`` and the benchmarks."""
    return cache_dir() / "judge_embeddings.sqlite"


class EmbeddingCache:
    """Map (judge, file path, size, mtime, face location) to an embedding, in SQLite."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB)")

    @staticmethod
    def key(judge_id: str, file: Path, where: str) -> str:
        """Key an embedding by judge, file identity and where in the file the face is."""
        st = file.stat()
        return f"{judge_id}|{file.resolve()}|{st.st_size}|{st.st_mtime_ns}|{where}"

    def get(self, key: str) -> np.ndarray | None:
        row = self.db.execute("SELECT vec FROM emb WHERE key = ?", (key,)).fetchone()
        return None if row is None else np.frombuffer(row[0], dtype=np.float32).copy()

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO emb VALUES (?, ?)",
                [(k, np.asarray(v, np.float32).tobytes()) for k, v in items.items()],
            )

    def close(self) -> None:
        self.db.close()


def embed_cached(judge, files: list[Path], items: list, cache_path: Path | None) -> np.ndarray:
    """Embed ``items`` (image, FaceRef) with ``judge``, reusing embeddings cached per face."""
    cache = EmbeddingCache(cache_path) if cache_path else None
    try:
        keys = [
            EmbeddingCache.key(judge.cache_id, f, ref.tag())
            for f, (_, ref) in zip(files, items, strict=True)
        ]
        found = [cache.get(k) if cache else None for k in keys]
        todo = [i for i, e in enumerate(found) if e is None]
        if todo:
            fresh = judge.embed([items[i] for i in todo], desc="judge originals")
            for i, e in zip(todo, fresh, strict=True):
                found[i] = e
            if cache:
                cache.put_many({keys[i]: found[i] for i in todo})
        return np.stack(found) if found else np.zeros((0, 128), np.float32)
    finally:
        if cache:
            cache.close()
