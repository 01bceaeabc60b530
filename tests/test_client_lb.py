"""Client-side load balancing: one client, several real replicas over one shared store."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import grpc
import nacl.signing
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auth_service.limits import ResourceLimits
from auth_service.server import Running, ServerConfig, TLSFiles, start
from auth_service.servicer import Policy
from auth_service.store_sqlite import SqliteStore
from auth_service.targets import (
    Target,
    channel_options,
    credentials,
    dial,
    resolve_target,
)
from edge_agent.cli import main
from edge_agent.client import AuthClient, ClientConfig
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc, common_pb2

REPO = Path(__file__).resolve().parent.parent
ADMIN = "admin-token"
VIRTUAL = common_pb2.EMBEDDING_SPACE_VIRTUAL
MODEL = common_pb2.ModelVersion(name="hpvfg", version="1.0.0")
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING
VECTOR = np.random.default_rng(7).standard_normal(128)
VECTOR /= np.linalg.norm(VECTOR)


def _embedding() -> common_pb2.Embedding:
    return common_pb2.Embedding(values=list(VECTOR), space=VIRTUAL, model=MODEL)


def _replicas(tmp_path: Path, n: int, tls: TLSFiles | None = None) -> list[Running]:
    """Start ``n`` replicas on free loopback ports, all over one store."""
    store = SqliteStore(tmp_path / "kfaar.db")
    policy = Policy("hpvfg/1.0.0", {VIRTUAL: 0.93})
    # One device calls as fast as it can (load over replicas): a call rate it never reaches.
    roomy = ResourceLimits(device_rate=1e9, device_burst=10**9)
    cfg = ServerConfig(
        tmp_path / "kfaar.db", policy, port=0, admin_token=ADMIN, workers=4, tls=tls, limits=roomy
    )
    return [start(cfg, store=store) for _ in range(n)]


def _stop(replicas: list[Running]) -> None:
    for r in replicas:
        r.stop(0)
    replicas[0].store.close()


def _device(port: int, creds: grpc.ChannelCredentials | None = None) -> tuple:
    """Register device ``cam`` through one replica; return its key and an app token."""
    key = nacl.signing.SigningKey.generate()
    target = Target(f"ipv4:127.0.0.1:{port}", "localhost" if creds else None)
    with dial(target.target, creds, channel_options(target, balanced=False)) as channel:
        admin = auth_pb2_grpc.AdminServiceStub(channel)
        meta = (("authorization", f"Bearer {ADMIN}"),)
        req = auth_pb2.RegisterDeviceRequest(device_id="cam", verify_key=key.verify_key.encode())
        admin.RegisterDevice(req, metadata=meta, timeout=10)
        req = auth_pb2.CreateAppTokenRequest(
            app_name="door", device_ids=["cam"], methods=["Enroll", "Verify", "Identify", "Rekey"]
        )
        token = admin.CreateAppToken(req, metadata=meta, timeout=10).token
    return key, token


def _client(replicas: list[Running], tls: dict[str, Path] | None = None) -> AuthClient:
    """A signed client over every replica, with the subject ``s`` enrolled through it."""
    tls = tls or {}
    key, token = _device(replicas[0].port, credentials(**tls) if tls else None)
    host = "localhost" if tls else "127.0.0.1"
    servers = ",".join(f"{host}:{r.port}" for r in replicas)
    files = (tls.get("ca"), tls.get("cert"), tls.get("key"))
    cfg = ClientConfig(servers, token, "cam", *files, deadline_s=3, backoff_s=0.05)
    client = AuthClient(cfg, key)
    client.call("Enroll", auth_pb2.EnrollRequest(subject_id="s", templates=[_embedding()]))
    return client


def _verify(client: AuthClient) -> None:
    reply = client.call("Verify", auth_pb2.VerifyRequest(subject_id="s", probe=_embedding()))
    assert reply.match


def _served(replicas: list[Running]) -> list[int]:
    """Return how many Verify calls each replica has answered."""
    get = [r.metrics.registry.get_sample_value for r in replicas]
    return [int(g("kfaar_requests_total", {"method": "Verify", "code": "OK"}) or 0) for g in get]


def _until_all_used(client: AuthClient, replicas: list[Running], which: list[int]) -> None:
    """Call until each replica in ``which`` served one: round_robin only uses READY ones."""
    give_up = time.monotonic() + 10
    while not all(_served(replicas)[i] for i in which):
        assert time.monotonic() < give_up, f"replicas never used: {_served(replicas)}"
        _verify(client)


@pytest.fixture
def pool(tmp_path: Path):
    replicas = _replicas(tmp_path, 3)
    client = _client(replicas)
    try:
        yield replicas, client
    finally:
        client.close()
        _stop(replicas)


def test_calls_spread_over_every_replica(pool) -> None:
    replicas, client = pool
    _until_all_used(client, replicas, [0, 1, 2])
    before = _served(replicas)
    for _ in range(30):
        _verify(client)
    spread = [a - b for a, b in zip(_served(replicas), before, strict=True)]
    assert sum(spread) == 30 and min(spread) >= 8, spread  # round robin: 10 each


def test_a_stopped_replica_costs_callers_nothing(pool) -> None:
    replicas, client = pool
    _until_all_used(client, replicas, [0, 1, 2])
    errors: list[BaseException] = []
    done = threading.Event()

    def keep_calling() -> None:
        while not done.is_set():
            try:
                _verify(client)
            except Exception as exc:  # any caller-visible error fails the test
                errors.append(exc)

    callers = [threading.Thread(target=keep_calling) for _ in range(3)]
    for t in callers:
        t.start()
    time.sleep(0.5)
    replicas[0].stop(5.0)  # as kfaar serve on SIGTERM: NOT_SERVING first, then a 5 s drain
    at_stop = _served(replicas)
    time.sleep(1.0)
    done.set()
    for t in callers:
        t.join()
    after = _served(replicas)
    assert not errors, errors
    assert after[0] == at_stop[0]  # nothing reached the stopped replica
    assert after[1] > at_stop[1] and after[2] > at_stop[2]  # the others took its share


def test_a_not_serving_replica_is_routed_around_until_it_serves_again(pool) -> None:
    replicas, client = pool
    _until_all_used(client, replicas, [0, 1, 2])
    replicas[1].health.set("", NOT_SERVING)  # client-side health checking sees it (Watch)
    time.sleep(0.3)
    before = _served(replicas)
    for _ in range(20):
        _verify(client)
    after = _served(replicas)
    assert after[1] == before[1] and after[0] > before[0] and after[2] > before[2]
    replicas[1].health.set("", SERVING)
    _until_all_used(client, replicas, [1])  # back in the rotation


def test_health_watches_do_not_hold_server_threads(pool) -> None:
    _, client = pool
    # Each balanced client keeps one health Watch open per replica; the servers have four
    # workers. A Watch that held a worker would leave later clients with none.
    others = [AuthClient(client.cfg, client.key) for _ in range(6)]
    try:
        for other in others:
            _verify(other)
    finally:
        for other in others:
            other.close()


def test_kfaar_health_checks_every_replica(pool, capsys) -> None:
    replicas, _ = pool
    servers = ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    assert main(["health", "--server", servers]) == 0
    assert "3 of 3 replicas serving" in capsys.readouterr().out
    replicas[1].health.set("", NOT_SERVING)
    replicas[2].stop(0)
    assert main(["health", "--server", servers, "--timeout", "1"]) == 1
    out, err = capsys.readouterr()
    assert f"127.0.0.1:{replicas[0].port}: SERVING" in out
    assert f"127.0.0.1:{replicas[1].port}: NOT_SERVING" in out
    assert f"127.0.0.1:{replicas[2].port}: not healthy: UNAVAILABLE" in err
    assert "1 of 3 replicas serving" in out


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    script = REPO / "deploy/tls/make-dev-certs.sh"
    subprocess.run([script, d, "cam", "kfaar-serve.test"], check=True, capture_output=True)
    return d


def test_mtls_over_a_list_of_hostnames(pki: Path, tmp_path: Path) -> None:
    tls = TLSFiles(pki / "server.crt", pki / "server.key", pki / "ca.crt")
    replicas = _replicas(tmp_path, 2, tls)
    files = {"ca": pki / "ca.crt", "cert": pki / "client.crt", "key": pki / "client.key"}
    client = _client(replicas, files)
    try:
        _until_all_used(client, replicas, [0, 1])  # localhost:p1,localhost:p2 -> ipv4:...
    finally:
        client.close()
        _stop(replicas)


def test_tls_checks_the_certificate_against_the_first_hostname(pki: Path, tmp_path: Path) -> None:
    tls = TLSFiles(pki / "server.crt", pki / "server.key")
    replicas = _replicas(tmp_path, 2, tls)
    creds = credentials(pki / "ca.crt")

    def fake_dns(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]  # both names "resolve" to loopback; only one is in the cert

    def check(servers: str) -> int:
        target = resolve_target(servers, fake_dns)
        with dial(target.target, creds, channel_options(target)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(), timeout=3).status

    a, b = (r.port for r in replicas)
    try:
        assert check(f"kfaar-serve.test:{a},kfaar-serve.test:{b}") == SERVING
        with pytest.raises(grpc.RpcError) as exc:  # the cert does not name evil.test
            check(f"evil.test:{a},kfaar-serve.test:{b}")
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        _stop(replicas)


def test_a_bad_server_list_exits_2_from_the_cli(tmp_path: Path, capsys) -> None:
    assert main(["health", "--server", "127.0.0.1:1,,127.0.0.1:2"]) == 2
    err = capsys.readouterr().err
    assert "entry 2 is empty" in err and "Traceback" not in err
    (tmp_path / "admin-token").write_text(ADMIN)
    admin = [
        "admin",
        "--server",
        "kfaar-serve",
        "--admin-token-file",
        str(tmp_path / "admin-token"),
    ]
    assert main([*admin, "revoke-token", "x"]) == 2
    assert "missing port (host:port)" in capsys.readouterr().err
    key = nacl.signing.SigningKey.generate()
    with pytest.raises(ValueError, match="missing port"):  # the edge agent's client
        AuthClient(ClientConfig("10.0.0.1:1,10.0.0.2", "token", "cam"), key)
