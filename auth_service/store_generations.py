"""Per-subject generations: a template row put back after a Rekey or Revoke fails its tag.

Every subject has a generation (``subject_generations``, schema 6) that moves on with
each Rekey and Revoke, and is created with the subject's first template. A template's
tag (auth_service/service_key.py) binds the generation it was written under, and the
generation row carries a tag of its own. A row is served only when its tag is valid for
the subject's current generation and that generation's tag is valid. So a thief who can
write the database but not read the service key cannot bring back a template a Rekey or
Revoke removed: its tag names an older generation. Putting back the old generation row
as well passes these checks; the audit chain, which records the generation of every
Rekey and Revoke, shows that (``kfaar audit verify``); the rollback anchor
(auth_service/anchor.py) refuses it: the sum of the generations goes back.

A generation row is valid on one timeline only. A restore the operator accepts (``kfaar
db accept-restore``) and a new database on an old key (``kfaar db init``) start a new one,
a random id kept in the reserved generation row ``""`` (no subject id is empty), and
re-tag the valid generation rows under it. Without that, rows kept from the abandoned
timeline (bob's generation 2, from before the restore) are tagged by the service and
could pay for another subject's rollback while keeping the sum. A database that never
had a timeline tags as before (an empty id).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from auth_service.service_key import ServiceKey

log = logging.getLogger(__name__)

# Selected after a template's own columns: its tag and generation, then the subject's
# current generation and that generation's tag (NULL: the subject has none).
GENERATION_COLUMNS = "t.tag, t.generation, g.generation, g.tag"
GENERATION_JOIN = "LEFT JOIN subject_generations g ON g.subject_id = t.subject_id"
MOVES_BATCH = 20_000  # generation rows checked per read
TIMELINE_ROW = ""  # the generation row holding the database's timeline id (its tag)


class GenerationStore:
    """Mixin over ``SqlStore``: needs ``_read``, ``_tx`` and ``service_key``."""

    _read: Callable[[], AbstractContextManager[Any]]
    _tx: Callable
    service_key: ServiceKey | None = None
    _timeline: bytes | None = None

    def timeline(self, cached: bool = True) -> bytes:
        """Return the database's timeline id (empty: it never had one).

        Read once and kept: a running service serves the timeline it started on; the
        anchor's check reads it afresh (``cached=False``).
        """
        if cached and self._timeline is not None:
            return self._timeline
        with self._read() as db:
            row = db.execute(
                "SELECT tag FROM subject_generations WHERE subject_id = ?", (TIMELINE_ROW,)
            ).fetchone()
        found = b"" if row is None or row[0] is None else bytes(row[0])
        if cached:
            self._timeline = found
        return found

    def new_timeline(self) -> int:
        """Start a new timeline: re-tag the valid generation rows under a fresh id.

        Rows whose tag is not valid now stay as they are (re-tagging must not launder a
        forged row). Returns how many rows were re-tagged.
        """
        key = self.service_key
        if key is None:
            raise ValueError("a new timeline needs the service key")
        old, new = self.timeline(cached=False), os.urandom(16)

        def run(db: Any) -> int:
            rows = db.execute(
                "SELECT subject_id, generation, tag FROM subject_generations "
                "WHERE subject_id <> ? AND tag IS NOT NULL",
                (TIMELINE_ROW,),
            ).fetchall()
            updates = [
                (key.generation_tag(s, int(g), new), s)
                for s, g, t in rows
                if key.check_generation(t, s, int(g), old)
            ]
            db.executemany("UPDATE subject_generations SET tag = ? WHERE subject_id = ?", updates)
            db.execute(
                "INSERT INTO subject_generations VALUES (?, 0, ?) ON CONFLICT (subject_id) "
                "DO UPDATE SET generation = 0, tag = excluded.tag",
                (TIMELINE_ROW, new),
            )
            return len(updates)

        n = int(self._tx(run))
        self._timeline = new
        return n

    def _generation(self, db: Any, subject: str, move_on: bool) -> int:
        """Return the subject's generation; a new one when ``move_on`` or when it has none."""
        row = db.execute(
            "SELECT generation FROM subject_generations WHERE subject_id = ?", (subject,)
        ).fetchone()
        if row is not None and not move_on:
            return int(row[0])
        gen = (int(row[0]) if row else 0) + 1
        key = self.service_key
        db.execute(
            "INSERT INTO subject_generations VALUES (?, ?, ?) ON CONFLICT (subject_id) "
            "DO UPDATE SET generation = excluded.generation, tag = excluded.tag",
            (subject, gen, key and key.generation_tag(subject, gen, self.timeline())),
        )
        return gen

    def _tagged(self, rows: list[tuple]) -> list[tuple]:
        """Keep the (subject, model, space, vector, GENERATION_COLUMNS...) rows to serve.

        Return (subject, model, space, vector) of each row whose tag is the service's for
        the subject's current generation, under a valid generation tag. Without a service
        key nothing is checked. A row that fails is refused (as if it were absent) and
        logged: someone wrote the table without the key, or put an old row back.
        """
        key = self.service_key
        if key is None:
            return [r[:4] for r in rows]
        good, bad, timeline = [], set(), self.timeline()
        for subject, model, space, vector, tag, gen, current, gen_tag in rows:
            if (
                gen == current
                and key.check_generation(gen_tag, subject, current, timeline)
                and key.check(tag, subject, model, space, bytes(vector), int(gen))
            ):
                good.append((subject, model, space, vector))
            else:
                bad.add(subject)
        if bad:
            log.error(
                "refused %d stored templates without a valid integrity tag for their "
                "subject's generation (subjects %s)",
                len(rows) - len(good),
                ", ".join(repr(s) for s in sorted(bad)[:5]),
            )
        return good

    def generation_moves(self, checked: bool = False) -> tuple[int, list[str]]:
        """Return how often generations moved on (sum of generation - 1) over tagged rows.

        With ``checked``, count only rows whose tag is the service's, and name the others
        (a forged row must not make up for an old one put back). Read in batches, so that
        a check of a million subjects never holds the store for long.
        """
        if not checked or self.service_key is None:
            with self._read() as db:
                row = db.execute(
                    "SELECT COALESCE(SUM(generation - 1), 0) FROM subject_generations "
                    "WHERE tag IS NOT NULL AND generation > 0"
                ).fetchone()
            return int(row[0]), []
        key, moves, forged, after = self.service_key, 0, [], TIMELINE_ROW  # rows after it
        timeline = self.timeline()
        while True:
            with self._read() as db:
                rows = db.execute(
                    "SELECT subject_id, generation, tag FROM subject_generations WHERE "
                    "tag IS NOT NULL AND subject_id > ? ORDER BY subject_id LIMIT ?",
                    (after, MOVES_BATCH),
                ).fetchall()
            for subject, gen, tag in rows:
                if int(gen) > 0 and key.check_generation(tag, subject, int(gen), timeline):
                    moves += int(gen) - 1
                else:
                    forged.append(repr(subject))
            if len(rows) < MOVES_BATCH:
                return moves, forged
            after = rows[-1][0]

    def legacy_tagged_templates(self) -> int:
        """Return how many templates carry a tag from before generations (schema 5)."""
        with self._read() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM templates WHERE generation = 0 AND tag IS NOT NULL"
            ).fetchone()
        return int(row[0])
