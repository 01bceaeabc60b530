"""``kfaar db accept-restore``: anchor a database restored from a backup on purpose.

`kfaar serve` refuses a database older than its rollback anchor (auth_service/anchor.py).
When the operator restored a backup knowingly, this command says so: it writes an audit row
naming what the database lost against the anchor, signs the chain head, and anchors the
database as it is. Revocations made after the backup are lost with it: do them again.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from functools import partial
from pathlib import Path

from auth_service.admin_cli import env
from auth_service.anchor import (
    ANCHOR_ENV,
    Anchor,
    AnchorError,
    AnchorState,
    default_path,
    read,
    write,
)


def register(actions: argparse._SubParsersAction, add_store_args, key_path, open_postgres) -> None:
    """Add ``accept-restore`` to ``kfaar db``, with db_cli's store options and openers."""
    a = actions.add_parser(
        "accept-restore",
        help="accept a database older than its rollback anchor (a backup restored on purpose)",
        description="Check --db or --db-url against its rollback anchor; if it is older (a "
        "backup restored, rows put back), write an audit row saying what it lost, sign the "
        "audit chain head and anchor the database as it is, so that `kfaar serve` starts. "
        "Subjects revoked or rekeyed after the backup are back: revoke or rekey them again. "
        "Exit 0 when accepted or not behind, 2 when the store, key or anchor cannot be used.",
    )
    add_store_args(a)
    a.add_argument(
        "--service-key-file",
        type=Path,
        default=env("KFAAR_SERVICE_KEY_FILE"),
        help="the service key ($KFAAR_SERVICE_KEY_FILE; default DB.key next to --db)",
    )
    a.add_argument(
        "--anchor-file",
        type=Path,
        default=env(ANCHOR_ENV),
        help=f"the replica's rollback anchor (${ANCHOR_ENV}; default: the key file plus .anchor)",
    )
    a.set_defaults(handler=partial(_accept, key_path=key_path, open_postgres=open_postgres))


def anchor_path(key_path: Path) -> Path:
    """Return the anchor that goes with a key: $KFAAR_ANCHOR_FILE, else beside it."""
    return Path(env(ANCHOR_ENV) or default_path(key_path))


def fresh(key_path: Path) -> None:
    """Anchor a database just created (``kfaar db init``): nothing committed yet."""
    write(anchor_path(key_path), AnchorState())


def _accept(args: argparse.Namespace, key_path, open_postgres) -> int:
    from auth_service import service_key
    from auth_service.store import StoreError
    from auth_service.store_sqlite import SqliteStore

    key_path = key_path(args)
    if key_path is None:
        raise ValueError("--service-key-file (or $KFAAR_SERVICE_KEY_FILE): this store's key")
    path = Path(args.anchor_file or default_path(key_path))
    try:
        key = service_key.load(key_path)
        store = open_postgres(args)[0] if args.db_url else SqliteStore(args.db, create=False)
    except (StoreError, service_key.ServiceKeyError) as exc:
        raise ValueError(str(exc)) from None
    try:
        store.service_key = key
        anchor = Anchor(path, store)
        try:
            anchored = read(path)
            problems = anchor.check()
        except AnchorError as exc:
            anchored, problems = None, [str(exc)]
        if anchored is not None and not problems:
            sys.stdout.write(f"not behind its rollback anchor {path}: nothing to accept\n")
            return 0
        if problems:
            what = "; ".join(problems)
            store.audit(_operator(), "AcceptRestore", None, f"accepted a rollback: {what}")
            store.audit_checkpoint()
            sys.stdout.write(f"accepted, and audited: {what}\n")
            # Rows kept from the abandoned timeline must not pass here (store_generations.py).
            n = store.new_timeline()
            sys.stdout.write(f"a new timeline: {n} generation rows re-tagged\n")
        state = anchor.accept()
    finally:
        store.close()
    sys.stdout.write(f"anchored {path}: {state.describe()}\n")
    return 0


def _operator() -> str:
    try:
        return f"operator:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name in this container
        return "operator:unknown"
