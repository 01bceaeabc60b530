"""``kfaar audit verify``: check the audit chains and checkpoints, name the first bad row.

Rows are read in insertion order (``id``); each writer's rows must follow each other
(sequence numbers 1, 2, 3, ... and each ``prev_hash`` the hash of the row before) and
every row's hash must match its content. A signed checkpoint must match the row at its
sequence number, so rows rewritten with fresh hashes, or cut off the end, are found too;
so must each checkpoint the rollback anchor (auth_service/anchor.py) recorded, so rows
cut off together with their checkpoint, or an older copy of the database, are found.
Rows from before the chain (older databases) are counted, not checked.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing

from auth_service.audit import GENESIS, checkpoint_message, row_hash


@dataclass(frozen=True)
class Finding:
    """One break in the evidence: what kind, at which row (id), in which chain."""

    kind: str  # changed | deleted | reordered | forged-checkpoint
    row_id: int | None
    writer: str
    seq: int | None
    message: str


@dataclass(frozen=True)
class Report:
    rows: int
    unchained: int
    checkpoints: int
    findings: list[Finding]

    @property
    def ok(self) -> bool:
        return not self.findings


def verify_rows(
    rows: list[tuple],
    checkpoints: list[tuple],
    trusted: set[bytes],
    anchored: dict[str, tuple[int, bytes]] | None = None,
) -> Report:
    """Check audit rows (see ``AuditChain.audit_rows``) and checkpoints; return the findings.

    ``anchored``: the rollback anchor's checkpoints, writer -> (seq, head).
    """
    findings: list[Finding] = []
    chains: dict[str, list[tuple]] = {}
    unchained = 0
    for row in rows:
        if row[8] is None:  # written before the chain existed
            unchained += 1
            continue
        chains.setdefault(row[8], []).append(row)
    for writer, mine in chains.items():
        findings += _check_chain(writer, mine)
    by_seq = {(r[8], int(r[9])): r for r in rows if r[8] is not None}
    for writer, seq, head, at, signature, key in checkpoints:
        seq = int(seq)
        msg = checkpoint_message(writer, seq, bytes(head), float(at))
        try:
            nacl.signing.VerifyKey(bytes(key)).verify(msg, bytes(signature))
            forged = trusted and bytes(key) not in trusted
        except (nacl.exceptions.BadSignatureError, ValueError):
            forged = True
        if forged:
            findings.append(
                Finding(
                    "forged-checkpoint",
                    None,
                    writer,
                    seq,
                    f"checkpoint {writer} seq {seq}: not signed by the service key",
                )
            )
            continue
        row = by_seq.get((writer, seq))
        if row is None:
            last = max((s for w, s in by_seq if w == writer), default=0)
            findings.append(
                Finding(
                    "deleted",
                    None,
                    writer,
                    seq,
                    f"rows {writer} seq {last + 1} to {seq} deleted: a signed "
                    f"checkpoint covers seq {seq}",
                )
            )
        elif bytes(row[11]) != bytes(head):
            findings.append(
                Finding(
                    "changed",
                    row[0],
                    writer,
                    seq,
                    f"row id {row[0]} ({writer} seq {seq}) differs from its signed "
                    "checkpoint: rows up to it were rewritten",
                )
            )
    for writer, (seq, head) in sorted((anchored or {}).items()):
        row = by_seq.get((writer, seq))
        if row is None:
            findings.append(
                Finding(
                    "deleted",
                    None,
                    writer,
                    seq,
                    f"{writer} has no row seq {seq}, which the rollback anchor recorded: the "
                    "chain was cut back, or an older copy of the database restored",
                )
            )
        elif bytes(row[11]) != bytes(head):
            findings.append(
                Finding(
                    "changed",
                    row[0],
                    writer,
                    seq,
                    f"row id {row[0]} ({writer} seq {seq}) is not the one the rollback "
                    "anchor recorded: the chain was rewritten, or another database restored",
                )
            )
    findings.sort(key=lambda f: (f.row_id is None, f.row_id or 0))
    return Report(len(rows), unchained, len(checkpoints), findings)


def _check_chain(writer: str, rows: list[tuple]) -> list[Finding]:
    """Walk one writer's rows in id order; return the first break (as a list of 0 or 1)."""
    place = {int(r[9]): i for i, r in enumerate(rows)}
    last_seq, last_hash, last_id = 0, GENESIS, None
    for i, row in enumerate(rows):
        rid, seq = row[0], int(row[9])
        prev, stored = bytes(row[10]), bytes(row[11])
        where = f"row id {rid} ({writer} seq {seq})"
        if seq != last_seq + 1:
            want = last_seq + 1
            if place.get(want, -1) > i or seq <= last_seq:
                return [
                    Finding(
                        "reordered",
                        rid,
                        writer,
                        seq,
                        f"{where} is out of order: seq {want} expected here",
                    )
                ]
            return [
                Finding(
                    "deleted",
                    rid,
                    writer,
                    want,
                    f"{writer} seq {want} to {seq - 1} deleted (before {where})",
                )
            ]
        if row_hash(prev, tuple(row[1:10])) != stored:
            return [
                Finding(
                    "changed",
                    rid,
                    writer,
                    seq,
                    f"{where} changed: its hash does not match its content",
                )
            ]
        if prev != last_hash:
            return [
                Finding(
                    "changed",
                    last_id,
                    writer,
                    seq - 1,
                    f"row id {last_id} ({writer} seq {seq - 1}) changed: {where} "
                    "does not link to it",
                )
            ]
        last_seq, last_hash, last_id = seq, stored, rid
    return []


def register(sub: argparse._SubParsersAction) -> None:
    from auth_service.db_cli import add_store_args

    p = sub.add_parser(
        "audit",
        help="check the audit trail (hash chains and signed checkpoints)",
        description="Audit trail tools. See docs/SECURITY.md.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    v = actions.add_parser(
        "verify",
        help="verify every chain; name the first changed, deleted or reordered row",
        description="Read the audit rows of --db or --db-url, check every writer's hash "
        "chain and every signed checkpoint. Exit 0 when intact, 1 naming the first bad "
        "row, 2 when the store cannot be read.",
    )
    add_store_args(v)
    v.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="the service key file; its checkpoint key is the only one trusted "
        "(default: $KFAAR_SERVICE_KEY_FILE, else DB.key next to --db)",
    )
    v.add_argument(
        "--anchor-file",
        type=Path,
        default=None,
        help="the rollback anchor whose checkpoints must be in the chain (default: "
        "$KFAAR_ANCHOR_FILE, else the key file plus .anchor, when it exists)",
    )
    v.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    import os

    from auth_service import anchor, service_key

    key_file = args.key_file or os.environ.get(service_key.KEY_ENV)
    if key_file is None and not args.db_url:
        key_file = service_key.default_path(args.db)
    from auth_service.store import StoreError

    trusted: set[bytes] = set()
    anchor_file = args.anchor_file or os.environ.get(anchor.ANCHOR_ENV)
    if anchor_file is None and key_file is not None:
        anchor_file = anchor.default_path(key_file)
    try:
        if key_file is not None and Path(key_file).exists():
            trusted.add(service_key.load(Path(key_file)).verify_key)
        anchored = anchor.read(Path(anchor_file)) if anchor_file else None
        store = _open(args)
    except (StoreError, service_key.ServiceKeyError) as exc:  # a message and exit 2
        raise ValueError(str(exc)) from None
    try:
        marks = None if anchored is None else anchored.checkpoints
        report = verify_rows(store.audit_rows(), store.audit_checkpoints(), trusted, marks)
    finally:
        store.close()
    out = (
        f"{report.rows} rows ({report.unchained} from before the chain), "
        f"{report.checkpoints} signed checkpoints"
    )
    if not trusted:
        out += " (no service key given: checkpoint signers not checked against it)"
    if anchored is not None:
        out += f", checked against the rollback anchor {anchor_file}"
    if report.ok:
        sys.stdout.write(f"intact: {out}\n")
        return 0
    sys.stdout.write(f"BROKEN: {report.findings[0].message}\n{out}\n")
    for f in report.findings[1:5]:
        sys.stdout.write(f"also: {f.message}\n")
    return 1


def _open(args: argparse.Namespace):
    """Open the store read for verification, never creating it."""
    from auth_service.store_sqlite import SqliteStore

    if args.db_url:
        from auth_service.store_postgres import PostgresStore

        return PostgresStore(args.db_url)
    return SqliteStore(args.db, create=False)
