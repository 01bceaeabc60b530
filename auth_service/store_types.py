"""The store's interface and types: errors, the gallery, the abstract ``TemplateStore``.

Kept apart from the SQL (auth_service/store.py) so that the index, the policy and the
servicer depend on what a store is, not on how it is written; nothing here imports the
store modules back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

EMBED_DIM = 128


class StoreError(Exception):
    """A stored value is missing or inconsistent."""


class StoreUnavailable(StoreError):
    """The database cannot be reached right now; the call may be retried."""


class StoreCorrupt(StoreUnavailable):
    """The database failed a page read or an integrity check: this replica stops serving."""


class StoreMissing(StoreError):
    """The database does not exist (or is an empty file) and was not to be created."""


class ReplyConflict(StoreError):
    """An idempotency key already names another request of the same device."""

    def __init__(self, method: str) -> None:
        super().__init__(f"idempotency key already used for a different {method} request")
        self.method = method


class NotOwner(StoreError):
    """A subject belongs to another app (None: to nobody, it predates ownership)."""

    def __init__(self, owner: str | None) -> None:
        super().__init__(f"the subject belongs to {owner!r}")
        self.owner = owner


class CapReached(StoreError):
    """A subject holds too many templates to take more."""

    def __init__(self, held: int) -> None:
        super().__init__(f"the subject holds {held} templates")
        self.held = held


class QuotaReached(StoreError):
    """An app holds as many enrolled subjects as it may: a new one is refused."""

    def __init__(self, held: int) -> None:
        super().__init__(f"the app holds {held} subjects")
        self.held = held


class _RacedInsert(Exception):
    """Another service process recorded the same key first; roll back and read its reply."""


@dataclass(frozen=True)
class Gallery:
    """All templates of one model version and space: ids (N,) and unit vectors (N, 128)."""

    subjects: list[str]
    vectors: np.ndarray


class TemplateStore(ABC):
    """What the service needs from storage; SQLite and PostgreSQL implement it."""

    @abstractmethod
    def enroll(self, subject: str, model: str, space: int, vectors: np.ndarray) -> int: ...

    @abstractmethod
    def replace(self, subject: str, model: str, space: int, vectors: np.ndarray) -> int: ...

    @abstractmethod
    def revoke(self, subject: str) -> int: ...

    @abstractmethod
    def subject_templates(self, subject: str) -> tuple[list[tuple[str, int]], np.ndarray]: ...

    @abstractmethod
    def gallery(self, model: str, space: int) -> Gallery: ...

    @abstractmethod
    def put_device(self, device_id: str, verify_key: bytes, scope: str = "default") -> None: ...

    @abstractmethod
    def device_key(self, device_id: str) -> bytes | None: ...

    @abstractmethod
    def remove_device(self, device_id: str) -> bool: ...

    @abstractmethod
    def put_token(
        self,
        app_name: str,
        token_hash: bytes,
        scope: str = "default",
        devices: tuple[str, ...] = (),
        methods: tuple[str, ...] = (),
    ) -> None: ...

    @abstractmethod
    def token_app(self, token_hash: bytes) -> str | None: ...

    @abstractmethod
    def remove_token(self, app_name: str) -> bool: ...

    @abstractmethod
    def once(
        self,
        device: str,
        key: str,
        method: str,
        request_hash: bytes,
        run: Callable[[], bytes],
        ttl_s: float,
        now: float | None = None,
    ) -> bytes: ...

    @abstractmethod
    def reply_method(self, device: str, key: str, ttl_s: float) -> str | None: ...

    @abstractmethod
    def audit(
        self,
        device_id: str | None,
        method: str,
        subject: str | None,
        outcome: str,
        count: int = 1,
    ) -> None: ...


def _vectors(blobs: list[bytes]) -> np.ndarray:
    """Decode stored float32 vectors into an (N, 128) array."""
    # One join and one decode: a million rows decode in a fraction of a second this way.
    return np.frombuffer(b"".join(blobs), np.float32).reshape(-1, EMBED_DIM).copy()


def _blob(vectors: np.ndarray) -> list[bytes]:
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != EMBED_DIM:
        raise StoreError(f"expected (N, {EMBED_DIM}) vectors, got {v.shape}")
    return [row.tobytes() for row in v]
