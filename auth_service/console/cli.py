"""``kfaar console``: run the operator console; ``kfaar console add-operator``: issue a login."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from auth_service.admin_cli import add_connection_args, env


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "console",
        help="the operator console in the browser (docs/CONSOLE.md)",
        description="A web console over the service's AdminService: devices, app tokens, "
        "subjects, decisions, lock-outs, live metrics, the audit log. Writes go through "
        "AdminService with the admin token and name the operator; listings read the store.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="serve the console", description=p.description)
    run.add_argument(
        "--host", default=env("KFAAR_CONSOLE_HOST", "127.0.0.1"), help="$KFAAR_CONSOLE_HOST"
    )
    run.add_argument(
        "--port",
        type=int,
        default=env("KFAAR_CONSOLE_PORT", "8443"),
        help="$KFAAR_CONSOLE_PORT (default 8443; 0: any free port, printed)",
    )
    run.add_argument("--insecure", action="store_true", help="plain HTTP, for loopback only")
    run.add_argument(
        "--tls-cert",
        type=Path,
        default=env("KFAAR_CONSOLE_TLS_CERT"),
        help="$KFAAR_CONSOLE_TLS_CERT",
    )
    run.add_argument(
        "--tls-key", type=Path, default=env("KFAAR_CONSOLE_TLS_KEY"), help="$KFAAR_CONSOLE_TLS_KEY"
    )
    add_connection_args(run)
    run.add_argument(
        "--admin-token-file",
        type=Path,
        default=env("KFAAR_ADMIN_TOKEN_FILE"),
        help="the admin token: the console's credential for AdminService, and a login "
        "($KFAAR_ADMIN_TOKEN_FILE)",
    )
    run.add_argument(
        "--db",
        type=Path,
        default=Path(env("KFAAR_DB", "kfaar.db")),
        help="the service's SQLite store, read (never written) for listings ($KFAAR_DB)",
    )
    run.add_argument(
        "--db-url",
        default=env("KFAAR_DB_URL"),
        help="PostgreSQL instead of --db: postgresql://USER@HOST:PORT/DB, read through "
        "read-only transactions; password from $PGPASSWORD or ~/.pgpass rather than in "
        "the URL; best a role with SELECT only ($KFAAR_DB_URL)",
    )
    run.add_argument(
        "--operators",
        type=Path,
        default=env("KFAAR_CONSOLE_OPERATORS"),
        help="operator tokens file (kfaar console add-operator) ($KFAAR_CONSOLE_OPERATORS)",
    )
    run.add_argument(
        "--metrics",
        action="append",
        default=_list(env("KFAAR_CONSOLE_METRICS", "")),
        metavar="URL",
        help="a replica's Prometheus endpoint, e.g. http://10.0.0.5:9100/metrics "
        "(repeatable; $KFAAR_CONSOLE_METRICS, comma-separated)",
    )
    run.add_argument(
        "--service-key-file",
        type=Path,
        default=None,
        help="the service key whose signed checkpoints the audit chain must carry "
        "(default: $KFAAR_SERVICE_KEY_FILE, else DB.key next to --db; with --db-url "
        "only a key given here or there is trusted)",
    )
    run.add_argument(
        "--guess-budgets",
        default=env("KFAAR_GUESS_BUDGETS", ""),
        help="the service's --guess-budgets, to tell who is locked out ($KFAAR_GUESS_BUDGETS)",
    )
    run.add_argument(
        "--silent-after",
        type=float,
        default=env("KFAAR_CONSOLE_SILENT_AFTER_S", "3600"),
        help="flag a door silent after this many seconds without a call "
        "($KFAAR_CONSOLE_SILENT_AFTER_S; default 3600)",
    )
    run.add_argument(
        "--session-minutes",
        type=float,
        default=env("KFAAR_CONSOLE_SESSION_MIN", "15"),
        help="idle minutes before a login expires ($KFAAR_CONSOLE_SESSION_MIN; default 15; "
        "8 hours at most in all)",
    )
    run.set_defaults(handler=_run)
    add = actions.add_parser(
        "add-operator",
        help="add an operator login; prints its token once",
        description="Append an operator to the operators file (mode 0600, hashes only).",
    )
    add.add_argument("name")
    add.add_argument("--role", choices=("write", "read"), default="read", help="default read")
    add.add_argument("--scope", default="*", help="one scope, or * for all (default *)")
    add.add_argument(
        "--operators",
        type=Path,
        default=env("KFAAR_CONSOLE_OPERATORS"),
        required=False,
        help="the operators file ($KFAAR_CONSOLE_OPERATORS)",
    )
    add.set_defaults(handler=_add)


def _list(text: str) -> list[str]:
    return [u.strip() for u in text.split(",") if u.strip()]


def _add(args: argparse.Namespace) -> int:
    from auth_service.console.auth import add_operator

    if args.operators is None:
        raise ValueError("--operators (or $KFAAR_CONSOLE_OPERATORS) must name the file")
    sys.stdout.write(add_operator(args.operators, args.name, args.role, args.scope) + "\n")
    return 0


def build(args: argparse.Namespace):
    """Return the console's app from parsed ``run`` arguments (errors: ValueError)."""
    from auth_service.console.routes import build_app

    return build_app(build_console(args))


def build_console(args: argparse.Namespace):
    """Return the console's state from parsed ``run`` arguments (errors: ValueError)."""
    from auth_service.console.app import Console
    from auth_service.console.auth import Directory, Sessions
    from auth_service.console.backend import Admin
    from auth_service.console.chain import Chain
    from auth_service.console.data import Reader
    from auth_service.console.live import Scraper
    from auth_service.console.sql import open_source
    from auth_service.ratelimit import GuessBudgets

    if args.admin_token_file is None or not Path(args.admin_token_file).is_file():
        raise FileNotFoundError("--admin-token-file (or $KFAAR_ADMIN_TOKEN_FILE) must name a file")
    if args.insecure == bool(args.tls_cert):
        raise ValueError("give --tls-cert and --tls-key, or --insecure for loopback")
    if args.insecure and args.host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("--insecure serves plain HTTP: only on a loopback --host")
    if args.tls_cert and not (
        Path(args.tls_cert).is_file() and args.tls_key and Path(args.tls_key).is_file()
    ):
        raise FileNotFoundError("--tls-cert and --tls-key must name readable files")
    if not 0 < args.session_minutes <= 480:
        raise ValueError("--session-minutes must be more than 0 and at most 480")
    token = Path(args.admin_token_file).read_text().strip()
    # One read-only source for the listings and the chain check; a bad --db-url, or a
    # database that cannot be reached, is a ValueError here (exit 2), password redacted.
    source = open_source(args.db, getattr(args, "db_url", None))
    return Console(
        directory=Directory(token, args.operators),
        reader=Reader(source),
        admin=Admin(args, token),
        scraper=Scraper(args.metrics),
        chain=Chain(source, getattr(args, "service_key_file", None)),
        budgets=GuessBudgets.parse(args.guess_budgets),
        tls=not args.insecure,
        silent_after_s=args.silent_after,
        sessions=Sessions(idle_s=args.session_minutes * 60),
    )


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    app = build(args)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    scheme = "http" if args.insecure else "https"
    sys.stdout.write(f"console on {scheme}://{args.host}:{sock.getsockname()[1]}/\n")
    sys.stdout.flush()
    config = uvicorn.Config(
        app,
        log_level="warning",
        server_header=False,
        proxy_headers=False,
        ssl_certfile=None if args.insecure else str(args.tls_cert),
        ssl_keyfile=None if args.insecure else str(args.tls_key),
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0
