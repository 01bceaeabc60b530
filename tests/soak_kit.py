"""A soak run: replicas of ``kfaar serve`` over one PostgreSQL, mixed load, one replica killed.

Two or more real ``kfaar serve`` processes share one real PostgreSQL. Devices write
(Enroll, Rekey, Revoke) and read (Verify, Identify) through the edge client, which
balances over every replica and retries a refused connection on another one. Every
``kill_every_s`` one replica (always the same: the others stay up, so their memory can be
watched) is SIGKILLed and started again. Every answer is checked against what the
acknowledged writes say, and the database is compared with it at the end. Shared by
tests/test_soak.py (one minute) and benchmarks/soak.py (half an hour).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import nacl.signing
import numpy as np
import psycopg
from fault_kit import Server, _free_port, diff_templates, next_write, register
from pg_kit import PostgresServer

from auth_service import service_key
from auth_service.servicer import Policy
from edge_agent.client import AuthClient, ClientConfig
from edge_agent.hpvfg import Bundle
from kfaar_pb.v1 import auth_pb2, common_pb2

SYNC_BOUND_S = 1.0  # a write older than this must show in Identify on every replica
# Guess budgets no soak reaches; the call rate is fault_kit.ROOMY_RATE, set for every Server.
ROOMY = "device=1000000/1000000,token=1000000/1000000,subject=1000000/1000000,pair=1000000/1000000"


@dataclass
class SoakReport:
    seconds: float
    replicas: int
    kills: int = 0
    writes: int = 0
    verifies: int = 0
    identifies: int = 0
    wrong: list[str] = field(default_factory=list)  # answers that contradict acked writes
    late: int = 0  # Identify answers younger than SYNC_BOUND_S that lagged (allowed)
    failed_calls: int = 0  # calls that failed for the caller after the client's retries
    lost: int = 0
    duplicated: int = 0
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (t, MB) of replica 0

    @property
    def rss_growth_mb(self) -> float:
        """RSS growth of the replica that is never killed, from the first to the last third."""
        if len(self.rss_mb) < 6:
            return 0.0
        third = len(self.rss_mb) // 3
        first = np.median([m for _, m in self.rss_mb[:third]])
        last = np.median([m for _, m in self.rss_mb[-third:]])
        return float(last - first)

    @property
    def clean(self) -> bool:
        return not self.wrong and self.lost == self.duplicated == self.failed_calls == 0


class _Subject:
    """What the acknowledged writes say of one subject, and whether a write is in flight."""

    def __init__(self) -> None:
        self.vectors: list[np.ndarray] = []
        self.version = 0  # bumped when a write starts and when it is acknowledged
        self.acked_at = 0.0


def rss_mb(pid: int) -> float:
    """Return a process's resident memory in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(
    workdir: Path,
    seconds: float = 60.0,
    replicas: int = 2,
    kill_every_s: float = 20.0,
    devices: int = 3,
    subjects: int = 12,
    seed: int = 0,
    progress=None,
) -> SoakReport:
    """Run the soak for ``seconds``; return what it saw (``SoakReport.clean`` when all is well)."""
    rng = random.Random(seed)
    policy = Policy.from_bundle(Bundle.load())
    space = min(s for s in policy.thresholds if s != common_pb2.EMBEDDING_SPACE_RECOVERED)
    pg = PostgresServer()
    pg.start()
    url = f"{pg.url}/postgres"
    key = workdir / "service.key"  # replicas on PostgreSQL refuse to serve unsigned
    if not key.exists():
        service_key.create(key)
    args = ("--db-url", url, "--service-key-file", str(key), "--guess-budgets", ROOMY,
            "--sync-poll", "0.5")  # fmt: skip
    servers = [
        Server(workdir, _free_port(), args=args, name=f"replica-{i}") for i in range(replicas)
    ]
    for server in servers:
        server.start()
    report = SoakReport(seconds, replicas)
    target = ",".join(f"127.0.0.1:{s.port}" for s in servers)
    clients, books = [], []
    for d in range(devices):
        device, key = f"cam-{d}", nacl.signing.SigningKey.generate()
        methods = ("Enroll", "Rekey", "Revoke", "Verify", "Identify")
        token = register(servers[0].port, device, key, methods)
        cfg = ClientConfig(target, token, device, deadline_s=3.0, attempts=30, backoff_s=0.05,
                           backoff_max_s=0.5)  # fmt: skip
        clients.append(AuthClient(cfg, key))
        books.append({f"{device}-s{i}": _Subject() for i in range(subjects)})
    lock, stop = threading.Lock(), threading.Event()
    name, version = policy.model.split("/")
    tag = common_pb2.ModelVersion(name=name, version=version)

    def emb(v: np.ndarray) -> common_pb2.Embedding:
        return common_pb2.Embedding(values=v.tolist(), space=space, model=tag)

    def writer(client: AuthClient, book: dict[str, _Subject], r: random.Random) -> None:
        state = {s: list(b.vectors) for s, b in book.items()}
        while not stop.is_set():
            subject = r.choice(list(book))
            kind, req = next_write(r, state, list(book), policy.model, space, subject)
            with lock:
                book[subject].version += 1
            try:
                client.call(kind, req)
            except grpc.RpcError as exc:
                with lock:
                    report.failed_calls += 1
                    report.wrong.append(f"{kind} {subject}: {exc.code().name} {exc.details()}")
                state[subject] = list(book[subject].vectors)
                continue
            with lock:
                b = book[subject]
                b.vectors, b.version, b.acked_at = list(state[subject]), b.version + 1, time.time()
                report.writes += 1
            time.sleep(r.uniform(0, 0.05))

    def reader(client: AuthClient, book: dict[str, _Subject], r: random.Random) -> None:
        while not stop.is_set():
            subject = r.choice(list(book))
            with lock:
                b = book[subject]
                before, vectors, acked_at = b.version, list(b.vectors), b.acked_at
            if before % 2:  # a write is in flight: no answer would be wrong
                time.sleep(0.005)
                continue
            probe = vectors[r.randrange(len(vectors))] if vectors else r_unit(r)
            identify, sent = r.random() < 0.5, time.time()
            try:
                if identify:
                    reply = client.call("Identify", auth_pb2.IdentifyRequest(probe=emb(probe)))
                    got = [c.subject_id for c in reply.candidates]
                    right = got == [subject] if vectors else subject not in got
                else:
                    req = auth_pb2.VerifyRequest(subject_id=subject, probe=emb(probe))
                    got = client.call("Verify", req).match
                    right = bool(vectors) and got
            except grpc.RpcError as exc:
                got, right = exc.code().name, exc.code() == grpc.StatusCode.NOT_FOUND
                right = right and not vectors and not identify
                if exc.code() not in (grpc.StatusCode.NOT_FOUND,):
                    with lock:
                        report.failed_calls += 1
            with lock:
                if b.version != before:  # a write started meanwhile: the answer may be either
                    continue
                report.identifies += identify
                report.verifies += not identify
                if right:
                    continue
                age = sent - acked_at  # how old the write was when the question was sent
                if identify and age < SYNC_BOUND_S:
                    report.late += 1  # inside the sync bound: another replica may not know yet
                    continue
                what = "Identify" if identify else "Verify"
                report.wrong.append(
                    f"{what} {subject} ({len(vectors)} templates): got {got}, sent {age:.2f} s "
                    f"after the write was acknowledged, answered in {time.time() - sent:.2f} s"
                )

    def r_unit(r: random.Random) -> np.ndarray:
        v = np.random.default_rng(r.getrandbits(64)).standard_normal(128)
        return v / np.linalg.norm(v)

    threads = []
    for client, book in zip(clients, books, strict=True):
        for role in (writer, reader):
            threads.append(
                threading.Thread(
                    target=role, args=(client, book, random.Random(rng.getrandbits(64)))
                )
            )
    started = time.monotonic()
    for t in threads:
        t.start()
    next_kill, victim = started + kill_every_s, servers[-1]
    try:
        while (now := time.monotonic()) - started < seconds:
            report.rss_mb.append((now - started, rss_mb(servers[0].proc.pid)))
            if progress is not None:
                progress(now - started, report)
            if replicas > 1 and now >= next_kill:
                victim.kill()
                report.kills += 1
                time.sleep(1.0)
                victim.start()
                next_kill = time.monotonic() + kill_every_s
            time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        for client in clients:
            client.close()
    try:
        _compare(url, books, report)
        for server in servers:
            server.stop()
    finally:
        for server in servers:
            server.proc.kill()  # if a stop above failed
        pg.remove()
    return report


def _compare(url: str, books: list[dict[str, _Subject]], report: SoakReport) -> None:
    """Compare the stored templates with the acknowledged writes: none lost, none twice."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT subject_id, vector FROM templates ORDER BY id").fetchall()
    expected = {
        subject: np.array(b.vectors, np.float32).reshape(-1, 128)
        for book in books
        for subject, b in book.items()
    }
    report.duplicated, report.lost, differ = diff_templates(rows, expected)
    report.wrong += [f"stored {s} differs from its acknowledged writes" for s in differ]
