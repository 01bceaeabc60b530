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
"""

from __future__ import annotations

import logging
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


class GenerationStore:
    """Mixin over ``SqlStore``: needs ``_read``, ``_tx`` and ``service_key``."""

    _read: Callable[[], AbstractContextManager[Any]]
    _tx: Callable
    service_key: ServiceKey | None = None

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
            (subject, gen, key and key.generation_tag(subject, gen)),
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
        good, bad = [], set()
        for subject, model, space, vector, tag, gen, current, gen_tag in rows:
            if (
                gen == current
                and key.check_generation(gen_tag, subject, current)
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
        key, moves, forged, after = self.service_key, 0, [], ""
        while True:
            with self._read() as db:
                rows = db.execute(
                    "SELECT subject_id, generation, tag FROM subject_generations WHERE "
                    "tag IS NOT NULL AND subject_id > ? ORDER BY subject_id LIMIT ?",
                    (after, MOVES_BATCH),
                ).fetchall()
            for subject, gen, tag in rows:
                if int(gen) > 0 and key.check_generation(tag, subject, int(gen)):
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
