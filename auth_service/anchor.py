"""The rollback anchor: what the database had committed, kept outside it, by the service key.

The threat: someone who can write the database but not the service key's file restores an
older copy of the whole database, or puts a revoked subject's old template rows back
together with its old generation row. Every tag in either is the service's own, so the
load alone serves the revoked person again.

The anchor is a small JSON file, ``<service key file>.anchor`` or ``$KFAAR_ANCHOR_FILE``,
0600, replaced atomically (temp file, fsync, rename, fsync of the folder). It records two
things that only grow while the database is in use, each read back from what the database
has committed:

- ``moves``: how often subject generations moved on, the sum of ``generation - 1`` over
  the subjects (auth_service/store_generations.py): each Rekey and Revoke adds one, a new
  subject none. Generation rows are never deleted and a thief cannot tag a newer
  generation, so putting any subject's old generation row back lowers the sum; only rows
  whose tag is the service's are counted at the thorough check, so forged rows cannot make
  up for it.
- ``checkpoints``: the newest audit checkpoint this service signed, per writer (seq and
  chain head). The row at that seq must still be in the database with that hash, so an
  older copy of the database, or a chain cut back, is found.
- ``timeline``: the database's timeline id (auth_service/store_generations.py), which must
  not change under the anchor: only ``kfaar db accept-restore`` starts a new one.

Why not the alternatives: a per-subject generation list grows with the subjects and is
rewritten on every Rekey; deriving each subject's generation from the audit chain needs
the whole chain re-hashed at every check (every Verify adds a row), and the Revoke row is
written after the Revoke's own transaction. The sum is one aggregate query when the
anchor moves, and one pass over the generation rows at the thorough check.

The rule is "the database is at least as new as the anchor", never equality: the anchor is
written after the database commits, so a crash in between leaves it behind, which is
harmless, and replicas on one PostgreSQL each keep their own anchor, which the others'
writes only move the database past. It moves at start, after every Rekey, Revoke,
UnregisterDevice and RevokeAppToken (with a checkpoint signed then), at each watchdog
checkpoint and at stop. ``kfaar db accept-restore`` moves it back on purpose, audited.

The anchor file itself may be removed or put back older (whoever restores the database
may reach it too). The service keeps the newest state it wrote in memory, so while it runs
the database is checked against that, whatever the file says, and the file is rewritten.
At start, a missing anchor is refused when the database's audit chain records that this
writer anchored it before at that path (a ``RollbackAnchor`` row, written at the first
start that anchors there): the anchor was removed, not never made.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auth_service.store_types import StoreError

log = logging.getLogger(__name__)

ANCHOR_ENV = "KFAAR_ANCHOR_FILE"
FORMAT = "kfaar-anchor/1"
MARKER = "RollbackAnchor"  # the audit method of the row that says a writer anchored


class StoreRolledBack(StoreError):
    """The database is older than its rollback anchor: restored or rolled back."""


class AnchorError(StoreError):
    """The anchor file cannot be read, or is not an anchor."""


@dataclass(frozen=True)
class AnchorState:
    """Generation moves and, per audit writer, the newest signed (seq, head)."""

    moves: int = 0
    checkpoints: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    timeline: str = ""  # hex; empty: the database had none when it was anchored

    def merged(self, newer: AnchorState) -> AnchorState:
        """Return the newer of each field: an anchor only moves forward."""
        marks = dict(self.checkpoints)
        for writer, (seq, head) in newer.checkpoints.items():
            if writer not in marks or seq > marks[writer][0]:
                marks[writer] = (seq, head)
        return AnchorState(max(self.moves, newer.moves), marks, newer.timeline or self.timeline)

    def describe(self) -> str:
        marks = ", ".join(f"{w} seq {s}" for w, (s, _) in sorted(self.checkpoints.items()))
        return f"{self.moves} generation moves, checkpoints: {marks or 'none'}"


def default_path(key_file: Path | str) -> Path:
    """Return where the anchor lives by default: beside the service key."""
    return Path(f"{key_file}.anchor")


def read(path: Path) -> AnchorState | None:
    """Read the anchor at ``path`` (None: there is none yet), or raise AnchorError."""
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise AnchorError(f"cannot read the rollback anchor {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(data.get("format"))
        marks = {str(w): (int(s), bytes.fromhex(h)) for w, (s, h) in data["checkpoints"].items()}
        timeline = data.get("timeline", "")
        bytes.fromhex(timeline)  # a ValueError (or TypeError) if it is not hex
        return AnchorState(int(data["moves"]), marks, timeline)
    except (ValueError, TypeError, KeyError, AttributeError):
        raise AnchorError(
            f"{path} is not a kfaar rollback anchor: restore it, or run `kfaar db "
            "accept-restore` to anchor the database as it is"
        ) from None


def write(path: Path, state: AnchorState) -> None:
    """Replace the anchor at ``path`` atomically (0600); raise OSError when it cannot."""
    path = Path(path)
    body = {
        "format": FORMAT,
        "moves": state.moves,
        "checkpoints": {w: [s, h.hex()] for w, (s, h) in sorted(state.checkpoints.items())},
        "timeline": state.timeline,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(body, indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself must survive a power cut
    finally:
        os.close(folder)


class Anchor:
    """One store's anchor file: check the database against it, move it forward."""

    def __init__(self, path: Path, store: Any) -> None:
        self.path, self.store = Path(path), store
        self.lock = threading.Lock()
        self.warning = ""  # set when the anchor cannot be written: served, but shown
        self.known: AnchorState | None = None  # the newest state this process wrote

    def current(self, anchored: AnchorState, moves: int) -> AnchorState:
        """Return what the committed database holds now, for the writers worth anchoring."""
        marks = {}
        for writer in {self.store._writer(), *anchored.checkpoints}:
            found = self.store.latest_checkpoint(writer)
            if found is not None:
                marks[writer] = found
        return AnchorState(moves, marks, self.store.timeline(cached=False).hex())

    def behind(self, anchored: AnchorState, moves: tuple[int, list[str]]) -> list[str]:
        """Return how the database is older than ``anchored`` (nothing: an empty list).

        ``moves`` is ``store.generation_moves()``: the database's count, and the subjects
        whose generation row is not tagged by the service.
        """
        problems = []
        for writer, (seq, head) in sorted(anchored.checkpoints.items()):
            found = self.store.audit_row_hash(writer, seq)
            if found is None:
                problems.append(
                    f"the audit chain of {writer!r} ends before seq {seq}, which a signed "
                    "checkpoint covered"
                )
            elif found != head:
                problems.append(f"audit row {writer!r} seq {seq} is not the one checkpointed")
        timeline = self.store.timeline(cached=False).hex()
        if anchored.timeline and timeline != anchored.timeline:
            problems.append(
                f"the database is on timeline {timeline or 'none'}, the anchor on "
                f"{anchored.timeline} (a database from before a restore the operator accepted, "
                "or another database on this key)"
            )
        moves, forged = moves
        if moves < anchored.moves:
            why = (
                f"subject generations went back: the database holds {moves} Rekey/Revoke "
                f"moves, the anchor {anchored.moves} (a rekeyed or revoked subject's old "
                "generation row is back)"
            )
            if forged:
                why += f"; generation rows not tagged by the service: {', '.join(forged[:5])}"
            problems.append(why)
        return problems

    def refusal(self, problems: list[str]) -> str:
        return (
            f"the database is older than its rollback anchor {self.path}: "
            + "; ".join(problems)
            + ". An older copy was restored, or rows were put back or cut off behind the "
            "service's back. If a backup was restored on purpose, run `kfaar db "
            "accept-restore` on this database and key (audited), then start again"
        )

    def _write(self, state: AnchorState) -> None:
        # What was read must be on disk before the anchor is: after a power cut a
        # database that lost a commit the anchor recorded would be refused.
        self.store.make_durable()
        write(self.path, state)
        self.known = state

    def _marker(self) -> str:
        # The anchor's path in it: an operator moving the anchor elsewhere starts a new one.
        return f"anchored by {self.path}"

    def _marked(self) -> bool:
        """Return whether the audit chain records that this writer anchored at this path."""
        return self.store.audited(self.store._writer(), MARKER, self._marker())

    def _missing(self, marked: bool) -> list[str]:
        """Return why a missing anchor file is refused: this writer anchored the database."""
        if not marked:
            return []  # never anchored (a database from before anchors): anchor it now
        return [
            f"the rollback anchor {self.path} is missing, yet the audit chain records that "
            "this service anchored this database before (the anchor was removed)"
        ]

    def _anchored(self, anchored: AnchorState | None) -> AnchorState | None:
        """Return the anchor file's state, never older than what this process wrote.

        A file removed or put back older while the service runs must not let a rollback in.
        """
        if self.known is None:
            return anchored
        if anchored is None or anchored.merged(self.known) != anchored:
            log.warning("the rollback anchor %s was removed or put back older", self.path)
        return self.known if anchored is None else anchored.merged(self.known)

    def open(self) -> None:
        """At start: raise StoreRolledBack if the database is behind; else anchor it now."""
        anchored = read(self.path)
        moves = self.store.generation_moves(checked=True)
        marked = self._marked()  # read once: it walks this writer's audit rows
        problems = self._missing(marked) if anchored is None else self.behind(anchored, moves)
        if problems:
            raise StoreRolledBack(self.refusal(problems))
        base = anchored or AnchorState()
        try:
            self._write(base.merged(self.current(base, moves[0])))
        except OSError as exc:
            self.warning = (
                f"no rollback anchor: cannot write {self.path} ({exc.strerror}); set "
                f"${ANCHOR_ENV} to a file the service may write, beside its key"
            )
            log.error("%s", self.warning)
            return
        # Once per writer and path, also for an anchor made before this row existed.
        if not marked:
            self.store.audit(None, MARKER, None, self._marker())
        if anchored is None:
            log.info("created the rollback anchor %s", self.path)

    def check(self) -> list[str]:
        """Return how the database is behind the anchor, counting only tagged generations."""
        anchored = self._anchored(read(self.path))
        if anchored is None:
            return self._missing(self._marked())
        return self.behind(anchored, self.store.generation_moves(checked=True))

    def advance(self) -> None:
        """Move the anchor to what the database has committed; mark the store if behind.

        Call outside any transaction: the anchor must never get ahead of a commit.
        """
        with self.lock:
            on_file = read(self.path)
            anchored = self._anchored(on_file) or AnchorState()
            moves = self.store.generation_moves()  # one aggregate: this runs after each Rekey
            if problems := self.behind(anchored, moves):  # moving on would forget it
                self.store.mark_faulty(self.refusal(problems))
                return
            newer = anchored.merged(self.current(anchored, moves[0]))
            if newer != on_file:  # moved on, or the file was removed or put back older
                self._write(newer)

    def accept(self) -> AnchorState:
        """Anchor the database as it is now, even behind the old anchor (an operator's act)."""
        with self.lock:
            state = self.current(AnchorState(), self.store.generation_moves(checked=True)[0])
            self._write(state)
            return state
