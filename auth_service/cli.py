"""``kfaar serve``: run the KVFA authentication service."""

from __future__ import annotations

import argparse
from pathlib import Path

from auth_service.admin_cli import add_connection_args, check_health
from auth_service.admin_cli import env as _env
from auth_service.admin_cli import register as register_admin
from auth_service.audit_verify import register as register_audit
from auth_service.console.cli import register as register_console
from auth_service.db_cli import add_store_args
from auth_service.db_cli import register as register_db
from auth_service.limits import add_limit_args
from auth_service.shortlist import ENGINES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run the gRPC authentication service",
        description="Serve AuthService and AdminService (plus health and reflection). Every "
        "flag has an environment variable for deployments.",
    )
    p.add_argument("--port", type=int, default=_env("KFAAR_PORT", "50051"), help="$KFAAR_PORT")
    p.add_argument("--host", default=_env("KFAAR_HOST", "127.0.0.1"), help="$KFAAR_HOST")
    add_store_args(p)
    p.add_argument(
        "--create",
        action="store_true",
        default=_env("KFAAR_DB_CREATE", "") in ("1", "true", "yes"),
        help="create the SQLite file (and its service key) if it does not exist; without "
        "it a missing or empty database is refused: make it with `kfaar db init` "
        "($KFAAR_DB_CREATE=1)",
    )
    p.add_argument(
        "--service-key-file",
        type=Path,
        default=_env("KFAAR_SERVICE_KEY_FILE"),
        help="the service's own key (audit checkpoint signatures, template integrity tags), "
        "kept out of the database ($KFAAR_SERVICE_KEY_FILE; default: DB.key next to --db; "
        "with --db-url, required, and every replica must share one: `kfaar db init "
        "--db-url URL --service-key-file PATH` makes it)",
    )
    p.add_argument(
        "--anchor-file",
        type=Path,
        default=_env("KFAAR_ANCHOR_FILE"),
        help="the rollback anchor, which a database restored or rolled back behind the "
        "service's back must not be older than (start refused, exit 2; `kfaar db "
        "accept-restore` accepts it); one per replica ($KFAAR_ANCHOR_FILE; default: the "
        "service key file's name plus .anchor)",
    )
    p.add_argument(
        "--allow-unsigned-store",
        action="store_true",
        default=_env("KFAAR_ALLOW_UNSIGNED_STORE", "") in ("1", "true", "yes"),
        help="serve a PostgreSQL store without a service key: templates untagged, audit "
        "checkpoints unsigned; logged as an error at start and shown by `kfaar health` "
        "($KFAAR_ALLOW_UNSIGNED_STORE=1; default: refuse to start, exit 2)",
    )
    p.add_argument(
        "--integrity-check",
        type=float,
        default=_env("KFAAR_INTEGRITY_CHECK_S", "600"),
        metavar="SECONDS",
        help="seconds between integrity checks of the store; a failed one turns health "
        "NOT_SERVING with the reason ($KFAAR_INTEGRITY_CHECK_S; default 600)",
    )
    p.add_argument("--insecure", action="store_true", help="plaintext, for loopback only")
    p.add_argument("--tls-cert", type=Path, default=_env("KFAAR_TLS_CERT"), help="$KFAAR_TLS_CERT")
    p.add_argument("--tls-key", type=Path, default=_env("KFAAR_TLS_KEY"), help="$KFAAR_TLS_KEY")
    p.add_argument(
        "--client-ca",
        type=Path,
        default=_env("KFAAR_TLS_CLIENT_CA"),
        help="require client certificates from this CA (mTLS); $KFAAR_TLS_CLIENT_CA",
    )
    p.add_argument(
        "--admin-token-file",
        type=Path,
        default=_env("KFAAR_ADMIN_TOKEN_FILE"),
        help="file holding the admin bearer token; $KFAAR_ADMIN_TOKEN_FILE",
    )
    p.add_argument(
        "--allow-recovered",
        action="store_true",
        help="also accept RECOVERED (KVFA) templates: linkable across keys, opt-in",
    )
    p.add_argument(
        "--virtual-scopes",
        default=_env("KFAAR_VIRTUAL_SCOPES", ""),
        metavar="SCOPE,...",
        help="scopes that accept VIRTUAL templates ('*': all). Off by default: VIRTUAL "
        "embeddings are linkable across keys (D_sys 0.29; 6.8%% of one person's pairs "
        "under two keys pass), KEYED ones are not ($KFAAR_VIRTUAL_SCOPES)",
    )
    p.add_argument("--bundle", type=Path, default=None, help="model bundle (default: shipped)")
    p.add_argument(
        "--far",
        type=float,
        default=_env("KFAAR_OPERATING_FAR", "1e-3"),  # a string default goes through type
        help="operating point: the false-accept rate whose thresholds, calibrated per space "
        "in the bundle, decide; 1e-3 or 1e-4 ($KFAAR_OPERATING_FAR; default 1e-3)",
    )
    p.add_argument("--require-liveness", action="append", default=[], metavar="SCOPE[:MODE]",
                   help="refuse Verify/Identify from devices of SCOPE without passed liveness "
                   "evidence; MODE any (default), passive, active (a timed challenge of 3+ "
                   "steps) or both, which stops phone replays (repeatable; also "
                   "$KFAAR_REQUIRE_LIVENESS=a,b:both)")  # fmt: skip
    p.add_argument(
        "--metrics-port",
        type=int,
        default=_env("KFAAR_METRICS_PORT", "0"),  # 0: off
        help="serve Prometheus metrics on this port ($KFAAR_METRICS_PORT; default off)",
    )
    p.add_argument(
        "--guess-budgets",
        default=_env("KFAAR_GUESS_BUDGETS", ""),
        metavar="NAME=BURST/PER_HOUR,...",
        help="Verify/Identify misses allowed back to back and regained per hour, per device, "
        "token, subject (all devices) and pair (one subject from one device); e.g. "
        "'device=200/2000' for a busy 1:N camera ($KFAAR_GUESS_BUDGETS; default "
        "device=50/360,token=200/1800,subject=20/60,pair=5/12)",
    )
    p.add_argument(
        "--ann-min-templates",
        type=int,
        default=_env("KFAAR_ANN_MIN_TEMPLATES", "100000"),
        help="1:N search uses an approximate shortlist with exact re-scoring from this many "
        "templates on, exact search below ($KFAAR_ANN_MIN_TEMPLATES; default 100000)",
    )
    p.add_argument(
        "--ann",
        choices=ENGINES,
        default=_env("KFAAR_ANN", "ivf"),
        help="the shortlist engine: FAISS inverted lists or a usearch HNSW graph "
        "($KFAAR_ANN; default ivf)",
    )
    p.add_argument(
        "--index-backend",
        choices=("memory", "milvus"),
        default=_env("KFAAR_INDEX_BACKEND", "memory"),
        help="where the 1:N index lives: in this process, or in a Milvus collection shared "
        "by all replicas ($KFAAR_INDEX_BACKEND; default memory)",
    )
    p.add_argument(
        "--milvus-uri",
        default=_env("KFAAR_MILVUS_URI"),
        help="with --index-backend milvus: a local Milvus Lite file FILE.db, or "
        "http://HOST:19530 ($KFAAR_MILVUS_URI)",
    )
    p.add_argument(
        "--db-pool",
        default=_env("KFAAR_DB_POOL", "2,16"),
        metavar="MIN,MAX",
        help="PostgreSQL connections this replica keeps open and may open at most "
        "($KFAAR_DB_POOL; default 2,16)",
    )
    p.add_argument(
        "--db-timeout",
        type=float,
        default=_env("KFAAR_DB_TIMEOUT_S", "5"),  # a string default goes through type
        help="seconds a call waits for a PostgreSQL connection, and a statement may run, "
        "before the caller gets UNAVAILABLE ($KFAAR_DB_TIMEOUT_S; default 5)",
    )
    p.add_argument(
        "--sync-poll",
        type=float,
        default=_env("KFAAR_SYNC_POLL_S", "1"),
        help="seconds between reads of the change log that keeps this replica's 1:N index "
        "in step with other replicas, when no notification arrives ($KFAAR_SYNC_POLL_S; "
        "default 1)",
    )
    p.add_argument(
        "--idempotency-ttl",
        type=float,
        default=_env("KFAAR_IDEMPOTENCY_TTL_S", "86400"),  # a string default goes through type
        help="seconds a write's reply answers retries with its idempotency key; longer than "
        "the longest outage an edge outbox must bridge ($KFAAR_IDEMPOTENCY_TTL_S; default "
        "86400)",
    )
    p.add_argument(
        "--grant-ttl",
        type=float,
        default=_env("KFAAR_GRANT_TTL_S", "10"),  # a string default goes through type
        metavar="SECONDS",
        help="how long an access grant, signed on each accepted Verify or matched Identify, "
        "lets a door controller open ($KFAAR_GRANT_TTL_S; default 10, at most 300)",
    )
    add_limit_args(p)  # streams and subjects one token may hold (auth_service/limits.py)
    p.set_defaults(handler=_serve)

    h = sub.add_parser(
        "health",
        help="ask a running service whether it serves (exit 0) or not (exit 1)",
        description="Query the gRPC health service, as a container HEALTHCHECK or a "
        "Kubernetes exec probe would. TLS settings are the edge agent's. Prints the "
        "replica's reason for NOT_SERVING, and a warning it serves with (e.g. an unsigned "
        "store: `SERVING [warning: ...]`, still exit 0).",
    )
    add_connection_args(h)
    h.add_argument("--timeout", type=float, default=3.0, help="seconds to wait (default 3)")
    h.set_defaults(handler=_health)
    register_admin(sub)  # kfaar admin: scoped devices and tokens
    register_console(sub)  # kfaar console: the operator console in the browser
    register_db(sub)  # kfaar db migrate
    register_audit(sub)  # kfaar audit verify


def _serve(args: argparse.Namespace) -> int:
    from auth_service.db_cli import check_db_url, redact
    from auth_service.index import IndexConfig
    from auth_service.index_sync import SyncConfig
    from auth_service.limits import limits_from_args
    from auth_service.liveness_policy import LivenessPolicy
    from auth_service.model_manifest import ModelManifest
    from auth_service.ratelimit import GuessBudgets
    from auth_service.server import ServerConfig, TLSFiles, serve_forever
    from auth_service.servicer import Policy
    from auth_service.store import StoreError

    if not args.idempotency_ttl > 0:
        raise ValueError("--idempotency-ttl must be a positive number of seconds")
    if args.ann_min_templates < 1:
        raise ValueError("--ann-min-templates must be at least 1")
    if args.index_backend == "milvus":
        from auth_service.index_milvus import check_uri

        check_uri(args.milvus_uri)  # none, a malformed one, or no pymilvus: a clear ValueError
    guess = GuessBudgets.parse(args.guess_budgets)  # a bad value raises a clear ValueError
    workers, limits = limits_from_args(args)  # likewise
    if not args.db_timeout > 0:
        raise ValueError("--db-timeout must be a positive number of seconds")
    pool = _pool(args.db_pool, args.db_timeout) if args.db_url else None
    secrets = check_db_url(args.db_url) if args.db_url else ()
    if not args.integrity_check > 0:
        raise ValueError("--integrity-check must be a positive number of seconds")
    from auth_service.access_grant import check_ttl

    check_ttl(args.grant_ttl)  # out of range: a clear ValueError, exit 2
    if not args.sync_poll > 0:
        raise ValueError("--sync-poll must be a positive number of seconds")
    if args.insecure == bool(args.tls_cert):
        raise ValueError("give --tls-cert and --tls-key, or --insecure for loopback")
    if args.insecure and args.host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("--insecure serves plaintext: only on a loopback --host")
    tls = None if args.insecure else TLSFiles(args.tls_cert, args.tls_key, args.client_ca)
    if tls is not None and not (tls.cert.is_file() and tls.key and tls.key.is_file()):
        raise FileNotFoundError("--tls-cert and --tls-key must name readable files")
    token = args.admin_token_file.read_text().strip() if args.admin_token_file else None
    virtual = frozenset(s.strip() for s in args.virtual_scopes.split(",") if s.strip())
    policy = Policy.from_bundle(
        ModelManifest.load(args.bundle), args.allow_recovered, args.far, virtual
    )
    cfg = ServerConfig(
        db=args.db,
        policy=policy,
        port=args.port,
        host=args.host,
        tls=tls,
        admin_token=token,
        metrics_port=args.metrics_port or None,
        db_url=args.db_url,
        index=IndexConfig(
            ann_min_templates=args.ann_min_templates,
            ann=args.ann,
            backend=args.index_backend,
            milvus_uri=args.milvus_uri,
        ),
        idempotency_ttl_s=args.idempotency_ttl,
        guess=guess,
        pool=pool,
        sync=SyncConfig(poll_s=args.sync_poll),
        liveness=LivenessPolicy.from_env(args.require_liveness),
        create_db=args.create,
        service_key_file=args.service_key_file,
        integrity_check_s=args.integrity_check,
        allow_unsigned_store=args.allow_unsigned_store,
        grant_ttl_s=args.grant_ttl,
        anchor_file=args.anchor_file,
        workers=workers,
        limits=limits,
    )
    from auth_service.service_key import ServiceKeyError

    try:
        serve_forever(cfg)
    except (StoreError, ServiceKeyError) as exc:  # a missing database, bad URL: a message
        raise ValueError(redact(str(exc), secrets)) from None
    return 0


def _pool(spec: str, timeout_s: float):
    """Parse ``MIN,MAX`` and a timeout into the PostgreSQL pool's settings."""
    from auth_service.store_postgres import PoolConfig

    try:
        low, high = (int(x) for x in spec.split(","))
        return PoolConfig(low, high, timeout_s, int(timeout_s * 1000))
    except ValueError as exc:
        raise ValueError(f"--db-pool {spec!r}: want MIN,MAX with 1 <= MIN <= MAX ({exc})") from None


def _health(args: argparse.Namespace) -> int:
    return check_health(args)  # each replica of a list or dns: name, one line each
