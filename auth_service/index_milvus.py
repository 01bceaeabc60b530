"""The 1:N index in Milvus: one vector database shared by every replica, same interface.

Milvus proposes a shortlist by HNSW and returns the stored fp32 vectors with it; the exact
cosine, computed here, decides (threshold and rank), as in ``TemplateIndex``. The URI is a
local file ending in ``.db`` (Milvus Lite, embedded: tests and single machines) or
``http(s)://HOST:19530`` (a Milvus server or cluster); the code is the same.

One collection per (model, space, scope), named by a hash: a search can never return
another scope's templates whatever a filter says, it pays no filter, and a model upgrade
or a dropped tenant is a collection of its own. Thousands of scopes would rather share a
collection with a partition key; kfaar deployments have a handful.

Rows are keyed ``<hash of subject>-<slot>``, so writing the same change twice, from one
replica or from several, leaves the same rows: writes are idempotent and replicas converge.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import grpc
import numpy as np

from auth_service.index_config import IndexConfig
from auth_service.milvus_conn import (
    TIMEOUT_S,
    WRITE_TIMEOUT_S,
    IndexUnavailable,
    check_uri,
    connect,
    why,
)
from auth_service.store import EMBED_DIM, Gallery

__all__ = ["IndexUnavailable", "MilvusIndex", "check_uri", "collection_name", "row_key"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# HNSW: the graph index both Milvus Lite (FAISS IndexHNSWFlat per segment) and a Milvus
# server build; IVF_FLAT needs training per segment, FLAT scans everything, HNSW_SQ and
# the PQ family are lossy (the exact re-score would hide that, but the shortlist would
# suffer). Lite 3.2.2 drops pymilvus 3's flattened build params and keeps its defaults,
# these same values; recall is bought at search time (IndexConfig.milvus_ef).
INDEX_PARAMS = {"M": 16, "efConstruction": 200}
METRIC = "COSINE"
WRITE_BATCH = 2_000  # rows per upsert: ~1.3 MB, far below gRPC's 64 MiB Milvus limit
READ_BATCH = 10_000  # rows per page when reading the whole collection back
INDEX_WAIT_S = 1800.0  # the longest a load waits for Milvus to index what it wrote
SUBJECT_MAX = 1024  # bytes of the subject key column (keys are scope + subject, ~200)
# Slots a subject may use: the servicer caps a subject at 32 templates. Writes address rows
# by key only, the one delete that costs no scan (Lite runs any other filter over all rows:
# a revoke by filter took >10 s at 200k rows here).
MAX_SLOTS = 64


def collection_name(name: str) -> str:
    """Return a valid Milvus collection name for an index name (any text)."""
    return "kfaar_" + hashlib.blake2b(name.encode(), digest_size=16).hexdigest()


def row_key(subject: str, slot: int) -> str:
    """Return the primary key of a subject's ``slot``-th template (hex, any subject text)."""
    return f"{hashlib.blake2b(subject.encode(), digest_size=16).hexdigest()}-{slot}"


def _digest(vector: np.ndarray) -> str:
    return hashlib.blake2b(vector.tobytes(), digest_size=8).hexdigest()


class MilvusIndex:
    """All templates of one model version, space and scope, in one Milvus collection."""

    def __init__(self, uri: str, name: str, config: IndexConfig | None = None) -> None:
        self.config = config or IndexConfig()
        self.uri, self.name = check_uri(uri), name
        self.collection = collection_name(name)
        self._client = connect(uri)
        self._call("open collection", self._open)

    @classmethod
    def from_gallery(cls, gallery: Gallery, config: IndexConfig, name: str) -> MilvusIndex:
        """Open the collection of ``name`` on ``config.milvus_uri`` and make it hold ``gallery``."""
        index = cls(config.milvus_uri or "", name, config)
        index.replace_all(gallery)
        return index

    def __len__(self) -> int:
        return int(self._query("count", "", ["count(*)"])[0]["count(*)"])

    @property
    def uses_shortlist(self) -> bool:
        return True  # Milvus always proposes from its HNSW graph; the exact score decides

    def set_ef_search(self, ef: int) -> None:
        """Change the graph's search breadth (recall against speed)."""
        self.config = dataclasses.replace(self.config, milvus_ef=ef)

    def replace_all(self, gallery: Gallery) -> tuple[int, int]:
        """Make the collection hold exactly ``gallery``; return the rows written and deleted."""
        vectors = np.asarray(gallery.vectors, np.float32).reshape(-1, EMBED_DIM)
        slots: dict[str, int] = {}
        want: dict[str, tuple[str, int, np.ndarray]] = {}
        for subject, vector in zip(gallery.subjects, vectors, strict=True):
            slot = slots[subject] = slots.get(subject, -1) + 1
            if slot >= MAX_SLOTS:
                raise ValueError(f"{subject!r} has over {MAX_SLOTS} templates")
            want[row_key(subject, slot)] = (subject, slot, vector)
        # Reading back (key, digest) costs far less than rewriting every row, and a replica
        # restarting on a collection already in step writes nothing (no index rebuild).
        have = self._call("read back", self._digests)
        stale = [pk for pk in have if pk not in want]
        rows = [self._row(subject, slot, v) for subject, slot, v in want.values()]
        rows = [r for r in rows if have.get(r["pk"]) != r["digest"]]
        for i in range(0, len(stale), WRITE_BATCH):
            self._delete(stale[i : i + WRITE_BATCH])
        self._upsert(rows)
        if rows or stale:
            # A flush seals the rows into segments that get their HNSW index (Lite searches
            # unsealed rows by brute force in Python: 4-8x slower at 50k rows here). Like
            # TemplateIndex's graph, the index is built before the service serves from it.
            self._call("flush", lambda: self._client.flush(self.collection, timeout=None))
            self._call("index build", self._wait_indexed)
        log.info(
            "milvus %s (%s): %d templates, %d written, %d deleted",
            self.collection, self.name, len(want), len(rows), len(stale),
        )  # fmt: skip
        return len(rows), len(stale)

    def add(self, subject: str, vectors: np.ndarray) -> None:
        """Make the subject's templates exactly ``vectors`` (M, 128): upsert, drop the excess."""
        vectors = np.asarray(vectors, np.float32).reshape(-1, EMBED_DIM)
        if len(vectors) > MAX_SLOTS:
            raise ValueError(f"{subject!r}: at most {MAX_SLOTS} templates, not {len(vectors)}")
        self._upsert([self._row(subject, slot, v) for slot, v in enumerate(vectors)])
        # After the upsert, so that a replaced subject is never missing from a search.
        self._delete([row_key(subject, slot) for slot in range(len(vectors), MAX_SLOTS)])

    def replace(self, subject: str, vectors: np.ndarray) -> None:
        """Make the subject's templates exactly ``vectors``; none: remove the subject."""
        if len(vectors):
            self.add(subject, vectors)  # upsert first: searches never miss the subject
        else:
            self.remove(subject)

    def remove(self, subject: str) -> int:
        """Drop every template of a subject; return how many there were."""
        keys = [row_key(subject, slot) for slot in range(MAX_SLOTS)]
        found = self._call(
            "get",
            lambda: self._client.get(
                self.collection, ids=keys, output_fields=["pk"], timeout=TIMEOUT_S
            ),
        )
        self._delete(keys)  # even when none were seen: a concurrent add may just have landed
        return len(found)

    def search(self, probe: np.ndarray, threshold: float, top_k: int) -> list[tuple[float, str]]:
        """Return up to ``top_k`` (score, subject) at or above ``threshold``, best first."""
        probe = np.asarray(probe, np.float32).reshape(EMBED_DIM)
        c = self.config
        params = {"metric_type": METRIC, "params": {"ef": max(c.milvus_ef, c.shortlist)}}
        found = self._call(
            "search",
            lambda: self._client.search(
                self.collection,
                data=[probe.tolist()],
                limit=c.shortlist,
                output_fields=["subject", "vector"],
                search_params=params,
                consistency_level="Strong",  # a row written just before is seen
                timeout=TIMEOUT_S,
            ),
        )
        hits = found[0] if found else []
        if not hits:
            return []
        vectors = np.asarray([h["entity"]["vector"] for h in hits], np.float32)
        scores = vectors @ probe  # the exact score decides, not Milvus's distance
        best: dict[str, float] = {}
        for i in np.flatnonzero(scores >= threshold):
            s = hits[i]["entity"]["subject"]
            best[s] = max(best.get(s, -1.0), float(scores[i]))
        return sorted(((sc, s) for s, sc in best.items()), reverse=True)[:top_k]

    def close(self) -> None:
        """Close the client (a local Milvus Lite keeps running for the process's other users)."""
        self._client.close()

    def _row(self, subject: str, slot: int, vector: np.ndarray) -> dict:
        return {
            "pk": row_key(subject, slot),
            "subject": subject,
            "digest": _digest(vector),
            "vector": vector,
        }

    def _upsert(self, rows: list[dict]) -> None:
        for i in range(0, len(rows), WRITE_BATCH):
            batch = rows[i : i + WRITE_BATCH]
            self._call(
                "upsert",
                lambda b=batch: self._client.upsert(self.collection, b, timeout=WRITE_TIMEOUT_S),
            )

    def _query(self, what: str, where: str, fields: list[str]) -> list[dict]:
        return self._call(
            what,
            lambda: self._client.query(
                self.collection,
                filter=where,
                output_fields=fields,
                consistency_level="Strong",
                timeout=TIMEOUT_S,
            ),
        )

    def _delete(self, keys: list[str]) -> None:
        if keys:
            self._call(
                "delete",
                lambda: self._client.delete(self.collection, ids=keys, timeout=WRITE_TIMEOUT_S),
            )

    def _digests(self) -> dict[str, str]:
        pages = self._client.query_iterator(
            self.collection,
            batch_size=READ_BATCH,
            output_fields=["pk", "digest"],
            consistency_level="Strong",
        )
        have: dict[str, str] = {}
        try:
            while page := pages.next():
                have.update((r["pk"], r["digest"]) for r in page)
        finally:
            pages.close()
        return have

    def _wait_indexed(self) -> None:
        # A Milvus server reports rows still waiting for its index; Lite 3.2.2 builds in
        # the background and reports every row indexed at once, so this returns at once.
        deadline = time.monotonic() + INDEX_WAIT_S
        while (left := self._client.describe_index(self.collection, "vector")).get(
            "pending_index_rows", 0
        ) and time.monotonic() < deadline:
            time.sleep(0.2)
        if left.get("pending_index_rows", 0):
            log.warning(
                "milvus %s: %d rows not indexed after %.0f s; searches stay exact, only slower",
                self.collection, left["pending_index_rows"], INDEX_WAIT_S,
            )  # fmt: skip

    def _open(self) -> None:
        from pymilvus import DataType, MilvusClient

        if not self._client.has_collection(self.collection):
            schema = MilvusClient.create_schema(
                auto_id=False, enable_dynamic_field=False, description=f"kfaar {self.name}"
            )
            schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=64)
            schema.add_field("subject", DataType.VARCHAR, max_length=SUBJECT_MAX)
            schema.add_field("digest", DataType.VARCHAR, max_length=16)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=EMBED_DIM)
            index = self._client.prepare_index_params()
            index.add_index("vector", index_type="HNSW", metric_type=METRIC, **INDEX_PARAMS)
            try:
                self._client.create_collection(
                    self.collection, schema=schema, index_params=index, consistency_level="Strong"
                )
                log.info("milvus: created %s for %s", self.collection, self.name)
            except Exception:
                if not self._client.has_collection(self.collection):
                    raise
                # another replica created it between our check and our create: fine
        # A reopened collection starts released (Lite) or may have been released (server).
        self._client.load_collection(self.collection)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        from pymilvus.exceptions import MilvusException

        try:
            return fn()
        except (MilvusException, grpc.RpcError, OSError) as exc:  # one clear exception
            raise IndexUnavailable(
                f"milvus {what} failed on {self.collection} ({self.name}) at {self.uri}: {why(exc)}"
            ) from exc
