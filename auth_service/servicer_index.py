"""The AuthServicer's 1:N indexes, kept in step with the store's writes."""

from __future__ import annotations

import threading
from collections.abc import Callable

from google.protobuf.message import Message

from auth_service.authz import DEFAULT_SCOPE, key_scope
from auth_service.idempotency import ReplyCache
from auth_service.index import IndexConfig, SearchIndex, build_index
from auth_service.policy import Policy
from auth_service.store import Gallery, TemplateStore


class IndexedWrites:
    """Mixin over ``AuthServicer``: needs ``store``, ``policy`` and ``replies``."""

    store: TemplateStore
    policy: Policy
    replies: ReplyCache

    def _init_indexes(self, index_config: IndexConfig | None) -> None:
        """Start with no index loaded and no write in progress."""
        # The 1:N indexes, one per embedding space and scope, loaded from the store on first
        # use and then updated in step with it. The lock keeps each store write and its index
        # update together, so a concurrent load never sees one without the other.
        self.index_config = index_config or IndexConfig()
        self._indexes: dict[tuple[int, str], SearchIndex] = {}
        self._write_lock = threading.RLock()
        # Subjects written inside an idempotent write's transaction: their index update
        # waits for the commit, so a rolled-back write never reaches the index.
        self._deferred: set[str] | None = None

    def index(self, space: int, scope: str = DEFAULT_SCOPE) -> SearchIndex:
        """Return the 1:N index of one embedding space and scope, loading it on first use."""
        loaded = self._indexes.get((space, scope))  # no lock: Identify never waits on writes
        if loaded is not None:
            return loaded
        with self._write_lock:
            if (space, scope) not in self._indexes:
                everyone = self.store.gallery(self.policy.model, space)
                mine = [i for i, s in enumerate(everyone.subjects) if key_scope(s) == scope]
                gallery = Gallery([everyone.subjects[i] for i in mine], everyone.vectors[mine])
                # Exact search until the shortlist is built: serve now, not in a minute.
                index = build_index(
                    gallery, self.index_config, f"{self.policy.model}/{space}/{scope}", wait=False
                )
                self._indexes[(space, scope)] = index
            return self._indexes[(space, scope)]

    def _write(self, subject: str, write: Callable[[], int]) -> int:
        """Run a store write that touches ``subject`` and bring the loaded indexes in line."""
        with self._write_lock:
            try:
                return write()
            finally:
                if self._deferred is None:
                    self._sync_index(subject)
                else:
                    self._deferred.add(subject)

    def apply_change(self, subject: str) -> None:
        """Bring the loaded indexes in line with a subject another replica wrote."""
        with self._write_lock:
            self._sync_index(subject)

    def reload_indexes(self) -> None:
        """Reload every loaded index from the store (the change log had a gap)."""
        with self._write_lock:
            loaded = list(self._indexes)
            self._indexes.clear()
            for space, scope in loaded:
                self.index(space, scope)

    def _sync_index(self, subject: str) -> None:
        """Make the loaded indexes hold exactly the subject's stored templates."""
        tags, stored = self.store.subject_templates(subject)
        for (space, scope), index in self._indexes.items():
            if scope != key_scope(subject):
                continue
            keep = [i for i, t in enumerate(tags) if t == (self.policy.model, space)]
            index.replace(subject, stored[keep])  # one step: no search sees the subject gone

    def _write_once(self, name: str, fn, req: Message, reply_type: type) -> Message:
        """Run an idempotent write and its cached reply in one transaction, then index it."""
        with self._write_lock:
            self._deferred = set()
            try:
                return self.replies.write_once(name, req, lambda: fn(req), reply_type)
            finally:
                touched, self._deferred = self._deferred, None
                for subject in touched:
                    self._sync_index(subject)
