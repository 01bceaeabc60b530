"""Build and run the gRPC server: TLS or mTLS, interceptors, health, reflection, drain."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import nacl.utils
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from auth_service import service_key
from auth_service.access_grant import DEFAULT_TTL_S as GRANT_TTL_S
from auth_service.anchor import Anchor
from auth_service.anchor import default_path as default_anchor_path
from auth_service.health import ReasonedHealth, Watchdog
from auth_service.idempotency import DEFAULT_TTL_S
from auth_service.index import IndexConfig
from auth_service.index_sync import IndexFollower, SyncConfig
from auth_service.interceptor import AuthInterceptor, DeviceVerifier, token_hash
from auth_service.limits import CallRate, ResourceLimits, StreamSlots
from auth_service.liveness_policy import LivenessPolicy
from auth_service.metrics import Metrics, MetricsInterceptor
from auth_service.proof import DEFAULT_WINDOW_MS, StoredNonces
from auth_service.ratelimit import GuessBudgets, GuessLimiter
from auth_service.refusals import RefusalAudit
from auth_service.servicer import AdminServicer, AuthServicer, Policy
from auth_service.store import StoreError, TemplateStore
from auth_service.store_sqlite import SqliteStore
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc

if TYPE_CHECKING:
    from auth_service.store_postgres import PoolConfig

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 1 << 20  # 32 templates of 128 floats are 17 KB; nothing needs more
MAX_CONNECTION_AGE_MS = 300_000
UNSIGNED_ENV = "KFAAR_ALLOW_UNSIGNED_STORE"
UNSIGNED_REFUSAL = (
    f"a PostgreSQL store needs the service key every replica shares: set "
    f"${service_key.KEY_ENV} (or --service-key-file) to its file; create one with "
    "`kfaar db init --db-url URL --service-key-file PATH` (its key step), then give it to "
    "every replica as a secret. Without it templates carry no integrity tag and audit "
    f"checkpoints are not signed; to run so anyway, pass --allow-unsigned-store "
    f"(${UNSIGNED_ENV}=1)"
)
UNSIGNED_WARNING = (
    "UNSIGNED STORE: running without a service key (--allow-unsigned-store): templates "
    "carry no integrity tag and audit checkpoints are not signed; anyone who can write the "
    f"database can swap templates unnoticed. Set ${service_key.KEY_ENV}."
)


@dataclass
class TLSFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: mTLS, clients must present a certificate from it


@dataclass
class ServerConfig:
    db: Path  # the SQLite file, unless db_url names a PostgreSQL database
    policy: Policy
    port: int = 50051
    host: str = "127.0.0.1"
    tls: TLSFiles | None = None  # None: plaintext, for loopback only
    admin_token: str | None = None
    workers: int = 16
    metrics_port: int | None = None  # serve Prometheus metrics on this port (None: off)
    window_ms: int = DEFAULT_WINDOW_MS
    # Online guessing: Verify and Identify misses per device, token and subject.
    guess: GuessBudgets = field(default_factory=GuessBudgets)
    index: IndexConfig = field(default_factory=IndexConfig)
    db_url: str | None = None  # postgresql://user@host:port/db (password: $PGPASSWORD)
    idempotency_ttl_s: float = DEFAULT_TTL_S  # how long a write's reply answers its retries
    pool: PoolConfig | None = None  # PostgreSQL connection pool (None: defaults)
    sync: SyncConfig = field(default_factory=SyncConfig)  # following other replicas' writes
    liveness: LivenessPolicy | None = None  # None: scopes from $KFAAR_REQUIRE_LIVENESS
    # Create a missing SQLite file (and its service key). `kfaar serve` leaves it off unless
    # --create: a deleted or truncated database must not come back empty (issue 20).
    create_db: bool = True
    # The service key (audit checkpoints, template tags); None: DB.key next to SQLite, and
    # for PostgreSQL $KFAAR_SERVICE_KEY_FILE (unset: neither tags nor signatures).
    service_key_file: Path | None = None
    integrity_check_s: float = 600.0  # seconds between integrity checks of the store
    # PostgreSQL without a service key serves untagged templates and unsigned checkpoints:
    # refused unless the operator says so (`--allow-unsigned-store`), loudly and in health.
    allow_unsigned_store: bool = False
    # Seconds an access grant (auth_service/access_grant.py) lets a door controller open.
    grant_ttl_s: float = GRANT_TTL_S
    # The rollback anchor (auth_service/anchor.py); None: SERVICE_KEY_FILE.anchor beside it.
    anchor_file: Path | None = None
    # What one caller may hold: streams, subjects, calls a second (auth_service/limits.py).
    limits: ResourceLimits = field(default_factory=ResourceLimits)


@dataclass
class Running:
    server: grpc.Server
    port: int
    store: TemplateStore
    health: ReasonedHealth
    metrics: Metrics
    follower: IndexFollower
    watchdog: Watchdog | None = None
    refusals: RefusalAudit | None = None
    call_rate: CallRate | None = None  # calls per device (auth_service/limits.py)

    def stop(self, grace: float = 5.0) -> None:
        """Drain: refuse new calls, let running ones finish for ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.follower.stop()
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.store.fault is None:  # pending refusal counts, then the chain head, signed
            try:
                if self.refusals is not None:
                    self.refusals.flush()
                self.store.seal()  # signs the head and moves the rollback anchor on
            except Exception as exc:  # the store is gone: nothing more to record
                log.warning("could not close the audit trail: %s", exc)


def open_store(cfg: ServerConfig) -> TemplateStore:
    """Open PostgreSQL when ``db_url`` is set, else the embedded SQLite file."""
    if cfg.db_url:
        from auth_service.store_postgres import PostgresStore

        return PostgresStore(cfg.db_url, cfg.pool)
    return SqliteStore(cfg.db, create=cfg.create_db)


def load_service_key(
    cfg: ServerConfig, store: TemplateStore | None = None
) -> service_key.ServiceKey | None:
    """Load the service key the config names; create a missing one only for a new store.

    A store that already holds tagged templates needs its own key back: a fresh one would
    refuse every template (restore the key file instead).
    """
    if not cfg.db_url and str(cfg.db) == ":memory:" and cfg.service_key_file is None:
        return service_key.ServiceKey(nacl.utils.random(service_key.SEED_BYTES))  # dies with it
    path = key_path(cfg)
    if path is None:
        if not cfg.allow_unsigned_store:
            raise service_key.ServiceKeyError(UNSIGNED_REFUSAL)
        log.error("%s", UNSIGNED_WARNING)
        return None
    if not Path(path).exists() and store is not None and store.has_tagged_templates():
        raise service_key.ServiceKeyError(
            f"no service key at {path}, but the database holds templates tagged with one: "
            "restore that key file"
        )
    return service_key.load_or_create(Path(path), cfg.create_db)


def key_path(cfg: ServerConfig) -> Path | None:
    """Return the service key file the config names (None: PostgreSQL without one)."""
    if cfg.service_key_file is None and not cfg.db_url:
        return service_key.default_path(cfg.db)
    return cfg.service_key_file


def open_anchor(cfg: ServerConfig, store: TemplateStore) -> None:
    """Refuse a database behind its rollback anchor (StoreRolledBack); else keep it."""
    key = key_path(cfg) if str(cfg.db) != ":memory:" else None
    path = cfg.anchor_file or (default_anchor_path(key) if key is not None else None)
    if store.service_key is None or path is None:  # unsigned, or gone with the process
        return
    store.anchor = Anchor(path, store)
    store.anchor.open()


def start(cfg: ServerConfig, store: TemplateStore | None = None) -> Running:
    """Start the server; port 0 binds a free port (see ``Running.port``)."""
    opened, store = store is None, store or open_store(cfg)
    if getattr(store, "service_key", None) is None:
        try:
            store.service_key = load_service_key(cfg, store)
            if store.service_key is not None and (n := store.legacy_tagged_templates()):
                # Their tags name no generation: served as they are, every one would be
                # refused; re-tagging them is the operator's act, with the key.
                raise service_key.ServiceKeyError(
                    f"{n} templates carry integrity tags from before subject generations "
                    "(schema 6): run `kfaar db migrate` with the service key first"
                )
            open_anchor(cfg, store)
        except (service_key.ServiceKeyError, StoreError):
            if opened:
                store.close()
            raise
    health_servicer = ReasonedHealth()
    if getattr(store, "service_key", None) is None:  # allowed only by --allow-unsigned-store
        health_servicer.warning = "unsigned store: no service key, templates untagged"
    elif getattr(store, "anchor", None) is not None and store.anchor.warning:
        health_servicer.warning = store.anchor.warning
    store.on_fault = health_servicer.unhealthy
    watchdog = Watchdog(store, cfg.integrity_check_s)
    watchdog.check()  # before serving: a damaged store starts NOT_SERVING, with the reason
    refusals = RefusalAudit(store)
    metrics = Metrics()
    # Nonces are spent in the store: a replay stays refused across restarts and replicas.
    verifier = DeviceVerifier(store, StoredNonces(store, cfg.window_ms))
    admin_hash = token_hash(cfg.admin_token) if cfg.admin_token else None
    streams = StreamSlots(cfg.limits.streams_per_token, cfg.limits.total_streams(cfg.workers))
    rate = CallRate(cfg.limits.device_rate, cfg.limits.device_burst)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=cfg.workers),
        interceptors=[
            MetricsInterceptor(metrics),
            AuthInterceptor(store, verifier, admin_hash, refusals, streams, rate),
        ],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # Clients resolve a DNS name again only when a connection ends: closing each
            # one after a while lets long-running cameras find replicas added since.
            ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
            ("grpc.max_connection_age_grace_ms", 30_000),
        ],
    )
    auth = AuthServicer(
        store,
        cfg.policy,
        verifier,
        GuessLimiter(store, cfg.guess),
        metrics,
        cfg.index,
        idempotency_ttl_s=cfg.idempotency_ttl_s,
        liveness=cfg.liveness,
        refusals=refusals,
        grant_ttl_s=cfg.grant_ttl_s,
        subjects_per_app=cfg.limits.subjects_per_app,
        call_rate=rate,
    )
    # Changes committed after this point reach the indexes through the follower; the ones
    # the loads below already saw are applied again, which is harmless.
    follower = IndexFollower(
        store,
        auth.apply_change,
        auth.reload_indexes,
        store.change_seq(),
        cfg.sync,
        metrics.sync_lag.observe,
    )
    for space in cfg.policy.thresholds:  # load (and for big galleries, build) before serving
        if store.fault is None:
            auth.index(space)
    follower.start()
    auth_pb2_grpc.add_AuthServiceServicer_to_server(auth, server)
    auth_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(store), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [s.full_name for s in auth_pb2.DESCRIPTOR.services_by_name.values()]
    reflection.enable_server_reflection(
        [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    address = f"{cfg.host}:{cfg.port}"
    if cfg.tls is None:
        port = server.add_insecure_port(address)
    else:
        ca = cfg.tls.client_ca.read_bytes() if cfg.tls.client_ca else None
        creds = grpc.ssl_server_credentials(
            [(cfg.tls.key.read_bytes(), cfg.tls.cert.read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )
        port = server.add_secure_port(address, creds)
    server.start()
    if cfg.metrics_port is not None:
        metrics.serve(cfg.metrics_port, cfg.host)
    health_servicer.serving(names)
    if store.fault is not None:
        log.error("NOT_SERVING: %s", store.fault)
    watchdog.start()
    log.info("serving on %s:%d (%s)", cfg.host, port, "TLS" if cfg.tls else "plaintext")
    log.info("%s", cfg.policy.describe())
    return Running(
        server, port, store, health_servicer, metrics, follower, watchdog, refusals, rate
    )


def serve_forever(cfg: ServerConfig, grace: float = 5.0) -> None:
    """Run until SIGTERM or SIGINT, then drain gracefully."""
    running = start(cfg)
    # The bound port on stdout (first line), for scripts that asked for port 0.
    sys.stdout.write(f"serving on {cfg.host}:{running.port}\n")
    sys.stdout.write(f"{cfg.policy.describe()}\n")  # which operating point decides
    sys.stdout.flush()
    done = threading.Event()

    def on_signal(signum: int, _frame) -> None:
        log.info("signal %d: draining for %.0f s", signum, grace)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    running.stop(grace)
