"""``kfaar db migrate``: bring the store's schema up to date as its own step, before a rollout.

Opening a store migrates it (auth_service/store.py, store_postgres.py), so this command
opens the store named by --db or --db-url, prints the schema version and exits. Replicas
migrate on start as well, under a PostgreSQL advisory lock, so a migration Job that races
them is safe; running it first makes a failed migration a failed Job, not crash loops.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from auth_service.admin_cli import env

log = logging.getLogger(__name__)

_USERINFO_SECRET = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")  # postgresql://user:SECRET@host
_KEYWORD_SECRET = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "db",
        help="database maintenance: schema migrations, accepting a restored backup",
        description="Maintain the template store kfaar serve uses: SQLite (--db) or "
        "PostgreSQL (--db-url).",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    m = actions.add_parser(
        "migrate",
        help="apply pending schema migrations, print the schema version",
        description="Open the store, which applies every pending schema migration, and "
        "print the schema version. Safe to repeat and to run while "
        "replicas start: they take the same PostgreSQL advisory lock, so one migrates and "
        "the others find the schema current. Exit 0 when the schema is current, 2 with a "
        "message (never the password) when the database cannot be opened.",
    )
    add_store_args(m)
    _key_arg(m)
    m.set_defaults(handler=_migrate)
    i = actions.add_parser(
        "init",
        help="create a new store and its service key",
        description="Create the SQLite file --db (refused if it exists) at the current schema, "
        "and the service key next to it (DB.key, or --service-key-file), which signs audit "
        "checkpoints and tags templates. `kfaar serve` refuses a missing or empty database "
        "unless this made it (or it runs with --create). PostgreSQL (--db-url, the database "
        "must exist): bring its schema up to date and create the service key "
        "--service-key-file names (required; refused if the file exists), which every "
        "replica then gets as $KFAAR_SERVICE_KEY_FILE; `kfaar serve` refuses PostgreSQL "
        "without it.",
    )
    add_store_args(i)
    _key_arg(i)
    i.set_defaults(handler=_init)
    from auth_service.anchor_cli import register as register_accept_restore

    register_accept_restore(actions, add_store_args, _key_path, _open_postgres)


def _key_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--service-key-file",
        type=Path,
        default=env("KFAAR_SERVICE_KEY_FILE"),
        help="the service key ($KFAAR_SERVICE_KEY_FILE; default DB.key next to --db)",
    )


def _key_path(args: argparse.Namespace) -> Path | None:
    from auth_service.service_key import default_path

    if args.service_key_file:
        return Path(args.service_key_file)
    return None if args.db_url else default_path(args.db)


def _init(args: argparse.Namespace) -> int:
    from auth_service import service_key
    from auth_service.store_sqlite import SqliteStore

    if args.db_url:
        return _init_postgres(args)
    if args.db.exists() and args.db.stat().st_size > 0:
        raise ValueError(f"--db: {args.db} exists already; kfaar db migrate upgrades it")
    if not args.db.parent.is_dir():
        raise FileNotFoundError(f"--db: no folder {args.db.parent} for {args.db.name}")
    key_path = _key_path(args)
    key = service_key.load_or_create(key_path, create_missing=True)
    store = SqliteStore(args.db)
    store.service_key = key
    try:
        store.new_timeline()  # rows of an old database on this key must not pass here
        version = store.schema_version
    finally:
        store.close()
    from auth_service.anchor_cli import fresh

    fresh(key_path)  # a new database: an anchor left by an old one would refuse it
    sys.stdout.write(f"created sqlite:{args.db} (schema version {version}), key {key_path}\n")
    return 0


def _init_postgres(args: argparse.Namespace) -> int:
    """Create the service key of a PostgreSQL store, migrate it and tag its templates."""
    from auth_service import service_key

    if not args.service_key_file:
        raise ValueError(
            "--service-key-file (or $KFAAR_SERVICE_KEY_FILE): where to write the key every "
            "replica of this PostgreSQL store will share"
        )
    key_path = Path(args.service_key_file)
    if key_path.exists():
        raise ValueError(f"--service-key-file: {key_path} exists already; kfaar db migrate uses it")
    store, where = _open_postgres(args)
    try:
        if store.has_tagged_templates():
            raise ValueError(
                f"{where} holds templates tagged with another service key: restore that key "
                "file instead of making a new one"
            )
        key = service_key.create(key_path)
        tagged = tag_untagged(store, key)
        version = store.schema_version
    finally:
        store.close()
    sys.stdout.write(f"initialised {where} (schema version {version}), key {key_path}\n")
    if tagged:
        sys.stdout.write(f"tagged {tagged} templates stored before integrity tags\n")
    return 0


def _open_postgres(args: argparse.Namespace):
    """Open (and migrate) the PostgreSQL store --db-url names; return it and its redacted URL."""
    try:
        from auth_service.store_postgres import PostgresStore
    except ModuleNotFoundError as exc:
        raise ValueError(f"--db-url needs kfaar[postgres] ({exc.name} is missing)") from None
    secrets = check_db_url(args.db_url)
    where = redact(args.db_url, secrets)
    try:
        return PostgresStore(args.db_url), where
    except Exception as exc:  # psycopg and the store word it; the password must not show
        why = redact(str(exc).strip(), secrets)
        raise ValueError(f"cannot open {where}: {why}") from None


def tag_untagged(store, key) -> int:
    """Tag templates stored without a tag, and re-tag schema 5 tags under generations.

    A template of schema 5 carries a tag without the subject's generation: it is re-tagged
    under the subject's current generation if (and only if) its old tag is valid. Returns
    how many had no tag; the re-tagged and refused ones are logged and printed.
    """
    store.service_key = key  # generation rows made here get their tag too
    with store._read() as db:
        rows = db.execute(
            "SELECT id, subject_id, model, space, vector, tag, generation FROM templates "
            "WHERE tag IS NULL OR generation = 0"
        ).fetchall()
        gens = db.execute(
            "SELECT subject_id, generation FROM subject_generations WHERE tag IS NULL"
        ).fetchall()
    counts = {"tagged": 0, "retagged": 0, "refused": 0}

    def run(db) -> None:
        for subject, gen in gens:  # written by a replica without a key
            db.execute(
                "UPDATE subject_generations SET tag = ? WHERE subject_id = ?",
                (key.generation_tag(subject, int(gen), store.timeline()), subject),
            )
        for rid, subject, model, space, vector, tag, gen in rows:
            vector = bytes(vector)
            if tag is not None and not key.check(tag, subject, model, space, vector):
                counts["refused"] += 1  # not the service's: stays refused, off the count
                db.execute("UPDATE templates SET generation = -1 WHERE id = ?", (rid,))
                continue
            gen = int(gen) or store._generation(db, subject, move_on=False)
            db.execute(
                "UPDATE templates SET tag = ?, generation = ? WHERE id = ?",
                (key.tag(subject, model, space, vector, gen), gen, rid),
            )
            counts["tagged" if tag is None else "retagged"] += 1

    if rows or gens:
        store._tx(run)
    if counts["retagged"]:
        log.info("re-tagged %d templates under their subject's generation", counts["retagged"])
        sys.stdout.write(
            f"re-tagged {counts['retagged']} templates under their subject's generation\n"
        )
    if counts["refused"]:
        log.warning("left %d templates with a tag that is not the service's", counts["refused"])
        sys.stdout.write(
            f"left {counts['refused']} templates whose tag is not this key's (refused)\n"
        )
    return counts["tagged"]


def add_store_args(p: argparse.ArgumentParser) -> None:
    """Add --db and --db-url: the template store, for kfaar serve and kfaar db."""
    p.add_argument(
        "--db",
        type=Path,
        default=Path(env("KFAAR_DB", "kfaar.db")),
        help="the SQLite file, used unless --db-url is given ($KFAAR_DB; default kfaar.db)",
    )
    p.add_argument(
        "--db-url",
        default=env("KFAAR_DB_URL"),
        help="PostgreSQL instead of SQLite: postgresql://USER@HOST:PORT/DB, password from "
        "$PGPASSWORD or ~/.pgpass rather than in the URL ($KFAAR_DB_URL)",
    )


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Replace passwords in ``text`` (URL userinfo, ``password=``, known ones) with ***."""
    text = _KEYWORD_SECRET.sub(r"\1***", _USERINFO_SECRET.sub(r"\1***@", text))
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return text


def check_db_url(url: str) -> tuple[str, ...]:
    """Check that ``url`` is a PostgreSQL URL or conninfo; return its passwords, to redact."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    if "://" in url and not url.startswith(("postgresql://", "postgres://")):
        scheme = url.split("://", 1)[0]
        raise ValueError(f"--db-url: expected postgresql://USER@HOST:PORT/DB, not {scheme}://")
    # A URL's userinfo may hold a password that libpq echoes in its parse errors.
    secrets = tuple(s for s in (_url_password(url),) if s)
    try:
        params = conninfo_to_dict(url)
    except ProgrammingError as exc:
        why = redact(str(exc).strip(), secrets)
        raise ValueError(f"--db-url: not a valid PostgreSQL URL: {why}") from None
    password = params.get("password")
    secrets += (str(password),) if password else ()
    port = str(params.get("port") or "5432")
    if not all(p.isdigit() and 0 < int(p) < 65536 for p in port.split(",")):
        raise ValueError(f"--db-url: the port must be a number 1-65535, not {port!r}")
    return secrets


def _url_password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:  # a malformed netloc: the regex redaction still covers it
        return None
    return unquote(password) if password else None


def _migrate(args: argparse.Namespace) -> int:
    from auth_service.store_sqlite import SqliteStore

    if args.db_url:
        store, where = _open_postgres(args)
    else:
        if not args.db.parent.is_dir():
            raise FileNotFoundError(f"--db: no folder {args.db.parent} for {args.db.name}")
        where = f"sqlite:{args.db}"
        store = SqliteStore(args.db)
    try:
        version = store.schema_version
        # Templates stored before integrity tags get theirs now, by the operator's hand:
        # the service itself never tags a row it finds untagged.
        key_path = _key_path(args)
        tagged = 0
        if key_path is not None:
            from auth_service import service_key

            tagged = tag_untagged(store, service_key.load_or_create(key_path, True))
    finally:
        store.close()
    sys.stdout.write(f"schema version {version}: {where}\n")
    if tagged:
        sys.stdout.write(f"tagged {tagged} templates stored before integrity tags\n")
    return 0
