"""Fault injection for exactly-once writes: SIGKILL a real ``kfaar serve`` at random points.

A few devices each queue a random plan of Enroll, Rekey and Revoke writes through their
own durable outbox, concurrently (so the server is busy when it dies), while a killer
thread kills the server with SIGKILL at random moments and restarts it on the same SQLite
file. At the end the database must hold, per subject, exactly what
the plan gives when every write is applied once, in order: a duplicated or lost write, or
one that overtook an older one, shows up as a difference. Shared by tests/ (a short run)
and benchmarks/exactly_once.py (a long one).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import nacl.signing
import numpy as np
from google.protobuf.message import Message

from auth_service.servicer import Policy
from edge_agent.client import AuthClient, ClientConfig, Outbox
from edge_agent.hpvfg import Bundle
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc, common_pb2

ADMIN = "fault-admin-token"
# Every `kfaar serve` this kit starts (exactly-once, soak, the replica benchmarks) takes
# many calls a second from each test device on purpose: a call rate none of them reaches.
# Set through the environment, which a baseline checkout without the flag ignores.
ROOMY_RATE = "1000000000,1000000000"
MAX_HELD = 6  # templates a subject may hold in the plan before it is rekeyed or revoked


@dataclass
class FaultReport:
    seed: int
    writes: int
    kills: int
    kills_with_backlog: int  # kills that came while writes were queued or in flight
    duplicated: int = 0  # templates stored more often than the plan says
    lost: int = 0  # templates the plan says are stored but are not
    reordered: list[str] = field(default_factory=list)  # subjects whose templates differ
    refused: int = 0  # writes the service refused (the plan has no invalid write)
    still_queued: int = 0
    reply_rows: int = 0  # cached replies of the device: one per applied write
    seconds: float = 0.0

    @property
    def exactly_once(self) -> bool:
        return (
            self.duplicated == self.lost == self.refused == self.still_queued == 0
            and not self.reordered
            and self.reply_rows == self.writes
        )


class Server:
    """``kfaar serve`` in a subprocess on a fixed loopback port, killable and restartable."""

    def __init__(
        self,
        workdir: Path,
        port: int,
        pythonpath: str | None = None,
        args: tuple[str, ...] = (),  # more ``kfaar serve`` flags, e.g. --db-url
        name: str = "serve",
    ) -> None:
        self.workdir, self.port, self.pythonpath = workdir, port, pythonpath
        self.args, self.name = args, name
        (workdir / "admin-token").write_text(ADMIN)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "edge_agent.cli", "serve", "--insecure", "--port",
               str(self.port), "--db", str(self.workdir / "kfaar.db"),
               "--admin-token-file", str(self.workdir / "admin-token"), *self.args]  # fmt: skip
        log = open(self.workdir / f"{self.name}.log", "a")  # noqa: SIM115  (kept by the process)
        # The first start creates the database (a baseline checkout ignores the variable).
        env = {**os.environ, "OMP_NUM_THREADS": "1", "KFAAR_DB_CREATE": "1",
               "KFAAR_VIRTUAL_SCOPES": "*", "KFAAR_DEVICE_RATE": ROOMY_RATE}  # fmt: skip
        if self.pythonpath:  # another version of the service, e.g. a baseline checkout
            env["PYTHONPATH"] = self.pythonpath
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                                     cwd=self.pythonpath or None)  # fmt: skip
        line = self.proc.stdout.readline()
        if not line.startswith("serving on"):
            self.proc.kill()
            raise RuntimeError(f"kfaar serve did not start: {line!r}; see {log.name}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register(
    port: int,
    device: str,
    key: nacl.signing.SigningKey,
    methods: tuple[str, ...] = ("Enroll", "Rekey", "Revoke"),
) -> str:
    """Register a device and return an app token for it that may call ``methods``."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        admin = auth_pb2_grpc.AdminServiceStub(channel)
        meta = (("authorization", f"Bearer {ADMIN}"),)
        vk = key.verify_key.encode()
        admin.RegisterDevice(
            auth_pb2.RegisterDeviceRequest(device_id=device, verify_key=vk), metadata=meta
        )
        req = auth_pb2.CreateAppTokenRequest(
            app_name=f"writer-{device}", device_ids=[device], methods=list(methods)
        )
        return admin.CreateAppToken(req, metadata=meta).token


def plan(rng: random.Random, n: int, subjects: list[str], model: str, space: int):
    """Return n valid writes in order and the state they leave: {subject: (k, 128) array}."""
    state: dict[str, list[np.ndarray]] = {}
    writes = [next_write(rng, state, subjects, model, space) for _ in range(n)]
    return writes, {s: np.array(v, np.float32).reshape(-1, 128) for s, v in state.items()}


def next_write(
    rng: random.Random,
    state: dict[str, list[np.ndarray]],
    subjects: list[str],
    model: str,
    space: int,
    subject: str | None = None,
) -> tuple[str, Message]:
    """Return one valid random write (kind, request) and apply it to ``state``."""  # fmt: skip
    name, version = model.split("/")
    tag = common_pb2.ModelVersion(name=name, version=version)
    subject = subject or rng.choice(subjects)
    held = state.get(subject, [])
    kinds = ["Enroll"] * (len(held) < MAX_HELD) + ["Rekey", "Revoke"] * bool(held)
    kind = rng.choice(kinds)
    vecs = [np.random.default_rng(rng.getrandbits(64)).standard_normal(128).astype(np.float32)
            for _ in range(rng.randint(1, 2))]  # fmt: skip
    sent = [v / float(np.linalg.norm(v)) for v in vecs]
    unit = [v / float(np.linalg.norm(v)) for v in sent]  # what the service stores
    templates = [common_pb2.Embedding(values=v.tolist(), space=space, model=tag) for v in sent]
    if kind == "Enroll":
        state[subject] = held + unit
        req = auth_pb2.EnrollRequest(subject_id=subject, templates=templates)
    elif kind == "Rekey":
        state[subject] = unit
        req = auth_pb2.RekeyRequest(subject_id=subject, templates=templates)
    else:
        state[subject] = []
        req = auth_pb2.RevokeRequest(subject_id=subject)
    return kind, req


def _compare(db: Path, expected: dict[str, np.ndarray], report: FaultReport) -> None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT subject_id, vector FROM templates ORDER BY id").fetchall()
        (report.reply_rows,) = conn.execute("SELECT COUNT(*) FROM replies").fetchone()
    finally:
        conn.close()
    report.duplicated, report.lost, report.reordered = diff_templates(rows, expected)


def diff_templates(
    rows: list[tuple[str, bytes]], expected: dict[str, np.ndarray]
) -> tuple[int, int, list[str]]:
    """Compare stored (subject, vector) rows with the expected (k, 128) templates per subject.

    Returns the templates stored more often than expected, those missing, and the subjects
    whose templates differ in any way (count, values or order).
    """
    stored: dict[str, list[np.ndarray]] = {}
    for subject, blob in rows:
        stored.setdefault(subject, []).append(np.frombuffer(blob, np.float32))
    duplicated, lost, differ = 0, 0, []
    for subject in sorted(set(stored) | set(expected)):
        got = np.array(stored.get(subject, []), np.float32).reshape(-1, 128)
        want = expected.get(subject, np.zeros((0, 128), np.float32))
        duplicated += max(0, len(got) - len(want))
        lost += max(0, len(want) - len(got))
        if got.shape != want.shape or not np.allclose(got, want, atol=1e-6):
            differ.append(subject)
    return duplicated, lost, differ


def run(
    workdir: Path,
    writes: int = 400,
    kills: int = 8,
    devices: int = 4,
    subjects: int = 25,
    seed: int | None = None,
    max_gap_s: float = 0.5,
    pace_s: float = 0.005,
    server_pythonpath: str | None = None,
) -> FaultReport:
    """Send ``writes`` over ``devices`` through their outboxes; kill the server ``kills`` times.

    Each device writes to ``subjects`` subjects of its own (few writes per subject, so most
    writes show in the final state) and waits up to ``pace_s`` between writes; a kill comes
    up to ``max_gap_s`` after the server is back.
    """
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    rng = random.Random(seed)
    policy = Policy.from_bundle(Bundle.load())
    space = min(s for s in policy.thresholds if s != common_pb2.EMBEDDING_SPACE_RECOVERED)
    server = Server(workdir, _free_port(), server_pythonpath)
    server.start()
    started = time.monotonic()
    report = FaultReport(seed, writes, kills, 0)
    clients, plans, expected = [], [], {}
    for d in range(devices):
        device, key = f"cam-{d}", nacl.signing.SigningKey.generate()
        names = [f"{device}-s{i}" for i in range(subjects)]
        todo, state = plan(rng, writes // devices + (d < writes % devices), names, policy.model,
                           space)  # fmt: skip
        token = register(server.port, device, key)
        cfg = ClientConfig(f"127.0.0.1:{server.port}", token, device, deadline_s=2.0, attempts=1,
                           backoff_s=0.05, backoff_max_s=0.3)  # fmt: skip
        client = AuthClient(cfg, key, Outbox(workdir / f"outbox-{device}.db"))
        client.start_delivery()
        clients.append(client)
        plans.append((todo, random.Random(rng.getrandbits(64))))
        expected.update(state)
    killer_rng = random.Random(rng.getrandbits(64))

    def killer() -> None:
        for _ in range(kills):
            time.sleep(killer_rng.uniform(0.05, max_gap_s))  # a random point of the traffic
            report.kills_with_backlog += any(c.queued() for c in clients)
            server.kill()
            server.start()

    def writer(client: AuthClient, todo: list, pace: random.Random) -> None:
        for kind, req in todo:
            try:
                client.send_or_queue(kind, req)
            except grpc.RpcError:
                report.refused += 1
            time.sleep(pace.uniform(0, pace_s))

    threads = [threading.Thread(target=killer)]
    threads += [
        threading.Thread(target=writer, args=(c, *p)) for c, p in zip(clients, plans, strict=True)
    ]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
        for client in clients:
            _, left = client.flush(timeout_s=60)
            report.still_queued += left
            report.refused += client.outbox.counts()[1]
    finally:
        for t in threads:
            t.join()
        for client in clients:
            client.close()
        server.stop()
    report.seconds = time.monotonic() - started
    _compare(workdir / "kfaar.db", expected, report)
    return report
