"""A real service on a loopback port with scoped devices and tokens, for the attack tests."""

from __future__ import annotations

from pathlib import Path

import grpc
import nacl.signing
import numpy as np

from auth_service.limits import ResourceLimits
from auth_service.proof import sign
from auth_service.ratelimit import Budget, GuessBudgets
from auth_service.server import Running, ServerConfig, TLSFiles, start
from auth_service.servicer import Policy
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc, common_pb2

ADMIN = "admin-secret-token"
MODEL = common_pb2.ModelVersion(name="hpvfg", version="1.0.0")
VIRTUAL = common_pb2.EMBEDDING_SPACE_VIRTUAL
THRESHOLD = 0.93
# What an enrolment station's token is granted (a camera's default is Verify and Identify).
ENROLLER = ("Enroll", "Verify", "Identify", "Rekey")
# Small budgets, so that a test reaches each limit in a few calls; leaks are slow enough
# (one failure an hour) that nothing refills while a test runs.
BUDGETS = GuessBudgets(
    device=Budget(20, 1), token=Budget(40, 1), subject=Budget(12, 1), pair=Budget(4, 1)
)
# A call rate no test reaches, for tests that send many calls from one device on purpose
# (throughput, races, floods of refusals); every other test runs `kfaar serve`'s default.
ROOMY_RATE = ResourceLimits(device_rate=1e9, device_burst=10**9)


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(128)
    return v / np.linalg.norm(v)


def emb(v: np.ndarray, model=MODEL, space=VIRTUAL) -> common_pb2.Embedding:
    return common_pb2.Embedding(values=list(v), model=model, space=space)


class Client:
    """One device with one token: signs every request like the edge agent does."""

    def __init__(
        self,
        port: int,
        token: str,
        device: str,
        key: nacl.signing.SigningKey,
        creds: grpc.ChannelCredentials | None = None,
    ):
        self.channel = (
            grpc.secure_channel(f"localhost:{port}", creds)
            if creds
            else grpc.insecure_channel(f"127.0.0.1:{port}")
        )
        self.stub = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.meta = (("authorization", f"Bearer {token}"),)
        self.device, self.key, self.token = device, key, token

    def signed(self, name: str, request):
        """Sign ``request`` for method ``name`` in place and return it."""
        return sign(f"/kfaar.v1.AuthService/{name}", request, self.device, self.key)

    def call(self, name: str, request, signed: bool = True):
        if signed:
            self.signed(name, request)
        return getattr(self.stub, name)(request, metadata=self.meta, timeout=10)

    def enroll(self, subject: str, *vectors: np.ndarray) -> auth_pb2.EnrollReply:
        req = auth_pb2.EnrollRequest(subject_id=subject, templates=[emb(v) for v in vectors])
        return self.call("Enroll", req)

    def verify(self, subject: str, v: np.ndarray) -> bool:
        return self.call("Verify", auth_pb2.VerifyRequest(subject_id=subject, probe=emb(v))).match

    def identify(self, v: np.ndarray, top_k: int = 10) -> list[str]:
        reply = self.call("Identify", auth_pb2.IdentifyRequest(probe=emb(v), top_k=top_k))
        return [c.subject_id for c in reply.candidates]


class Site:
    """A running service plus its admin: registers scoped devices and tokens, restarts."""

    def __init__(
        self,
        db: Path,
        db_url: str | None = None,
        budgets: GuessBudgets = BUDGETS,
        policy: Policy | None = None,
        tls: TLSFiles | None = None,
        creds: grpc.ChannelCredentials | None = None,
        workers: int = 4,
        limits: ResourceLimits | None = None,
    ):
        self.creds = creds  # what every channel of this site presents (TLS, mTLS)
        self.cfg = ServerConfig(
            db=db,
            policy=policy or Policy("hpvfg/1.0.0", {VIRTUAL: THRESHOLD}),
            port=0,
            admin_token=ADMIN,
            workers=workers,
            guess=budgets,
            db_url=db_url,
            tls=tls,
            # Replicas on one PostgreSQL share one service key (serve refuses none).
            service_key_file=db.parent / "pg-service.key" if db_url else None,
            limits=limits or ResourceLimits(),
        )
        self.running: Running = start(self.cfg)
        self.keys: dict[str, nacl.signing.SigningKey] = {}

    @property
    def admin(self) -> auth_pb2_grpc.AdminServiceStub:
        return auth_pb2_grpc.AdminServiceStub(self.channel())

    def channel(self) -> grpc.Channel:
        if self.creds:
            return grpc.secure_channel(f"localhost:{self.running.port}", self.creds)
        return grpc.insecure_channel(f"127.0.0.1:{self.running.port}")

    def device(self, device_id: str, scope: str = "") -> nacl.signing.SigningKey:
        key = self.keys.setdefault(device_id, nacl.signing.SigningKey.generate())
        req = auth_pb2.RegisterDeviceRequest(
            device_id=device_id, verify_key=key.verify_key.encode(), scope=scope
        )
        self.admin.RegisterDevice(req, metadata=(("authorization", f"Bearer {ADMIN}"),))
        return key

    def token(self, app: str, scope: str = "", devices=(), methods=(), shared=False) -> str:
        req = auth_pb2.CreateAppTokenRequest(
            app_name=app,
            scope=scope,
            device_ids=list(devices),
            methods=list(methods),
            shared=shared,
        )
        meta = (("authorization", f"Bearer {ADMIN}"),)
        return self.admin.CreateAppToken(req, metadata=meta).token

    def client(
        self, device: str, scope: str = "", token: str | None = None, methods=ENROLLER
    ) -> Client:
        """Register ``device`` in ``scope`` (with its own token unless given) and connect.

        Its own token may enroll and rekey (``methods``); a camera's default is verify-only.
        """
        key = self.device(device, scope)
        token = token or self.token(f"app-{device}", scope, devices=[device], methods=methods)
        return Client(self.running.port, token, device, key, self.creds)

    def as_admin(self, client: Client) -> Client:
        """The same device, calling with the admin token."""
        return Client(self.running.port, ADMIN, client.device, client.key, self.creds)

    def restart(self) -> None:
        """Stop the server and start a new one on the same database (a real restart)."""
        self.running.stop(0)
        self.running.store.close()
        self.running = start(self.cfg)

    def reconnect(self, client: Client) -> Client:
        return Client(self.running.port, client.token, client.device, client.key, self.creds)

    def stop(self) -> None:
        self.running.stop(0)


def code(fn) -> grpc.StatusCode:
    """Run ``fn``, which must fail with an RpcError; return its status code."""
    try:
        fn()
    except grpc.RpcError as exc:
        return exc.code()
    raise AssertionError("the call succeeded")
