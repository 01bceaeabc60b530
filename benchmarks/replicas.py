"""Replicas over one PostgreSQL: throughput, revocation reach, start-up at 100k and 1M templates.

Real ``kfaar serve`` processes share one real PostgreSQL on loopback. Load comes from
client processes (so the load generator's GIL is not the limit) that balance over every
replica with gRPC's round_robin, each request freshly signed. Printed as tables:

1. Verify and Identify calls/s, p50 and p99 with 1, 2 and 4 replicas at concurrency 16
   and 64, as a ratio to one replica in the same run, and where the CPU went (replicas,
   PostgreSQL, load generators), which says what limits the scaling.
2. How long a Revoke on one replica takes to stop Identify matching on another (p50, p99).
3. Start-up of a replica (to its first "serving" line) with 100k and 1M templates, its
   memory, against the former gallery load (one query, rows decoded one by one).

Run: python benchmarks/replicas.py [--seconds 5] [--sizes 100000,1000000] [--gallery 10000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import grpc
import nacl.signing
import numpy as np
from fault_kit import ADMIN, Server, _free_port
from pg_kit import PostgresServer
from soak_kit import ROOMY, rss_mb

from auth_service.interceptor import token_hash
from auth_service.proof import sign
from auth_service.servicer import Policy
from auth_service.store_postgres import PostgresStore
from edge_agent.hpvfg import Bundle
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc, common_pb2

TOKEN = "bench-token"
LB = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def _units(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _cpu_s(pids: list[int]) -> float:
    """Return the CPU seconds (user + system) the processes have used so far."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def _postgres_pids(data_dir: Path) -> list[int]:
    """Return the PostgreSQL server and backend processes (the postmaster's children)."""
    master = int((data_dir / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [master, *map(int, children)]


def _client(target, method, probe, n, threads, device, seed, go, out) -> None:
    """One load-generating process: pre-sign ``n`` requests, send them from ``threads``."""
    key = nacl.signing.SigningKey(seed)
    emb = common_pb2.Embedding(**probe)
    reqs = []
    for _ in range(n):
        if method == "Verify":
            req = auth_pb2.VerifyRequest(subject_id="s-0", probe=emb)
        else:
            req = auth_pb2.IdentifyRequest(probe=emb, top_k=1)
        reqs.append(sign(f"/kfaar.v1.AuthService/{method}", req, device, key))
    channel = grpc.insecure_channel(target, options=[("grpc.service_config", LB)])
    grpc.channel_ready_future(channel).result(timeout=30)
    call = getattr(auth_pb2_grpc.AuthServiceStub(channel), method)
    meta = (("authorization", f"Bearer {TOKEN}"),)
    seconds = go.get()  # the start signal: every process starts together
    cursor, lock, lat, errors = iter(range(n)), threading.Lock(), [], [0]
    stop, cpu0 = time.perf_counter() + seconds, os.times()

    def worker() -> None:
        mine = []
        for i in cursor:
            if time.perf_counter() > stop:
                break
            t0 = time.perf_counter()
            try:
                call(reqs[i], metadata=meta, timeout=10)
            except grpc.RpcError:
                errors[0] += 1
            mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    cpu = os.times()
    out.put((lat, time.perf_counter() - t0, errors[0], cpu[0] + cpu[1] - cpu0[0] - cpu0[1]))


def load(ports, method, probe, concurrency, seconds, seed, procs=2):
    """Return calls/s, p50 ms, p99 ms, errors and CPU seconds of the clients."""
    ctx = mp.get_context("fork")
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    go, back = ctx.Queue(), ctx.Queue()
    n = int(2500 * seconds / procs) + 100  # more signed requests than any run can send
    workers = [
        ctx.Process(
            target=_client,
            args=(target, method, probe, n, concurrency // procs, "bench", seed, go, back),
        )
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    for _ in workers:
        go.put(seconds)
    results = [back.get(timeout=seconds + 300) for _ in workers]
    for w in workers:
        w.join()
    lat = np.concatenate([np.asarray(r[0]) for r in results]) * 1000
    elapsed = max(r[1] for r in results)
    return (len(lat) / elapsed, np.percentile(lat, 50), np.percentile(lat, 99),
            sum(r[2] for r in results), sum(r[3] for r in results))  # fmt: skip


def revocation_reach(ports, probe, trials: int, key: nacl.signing.SigningKey) -> np.ndarray:
    """Revoke on one replica; return seconds until Identify on another stops matching."""
    a, b = (auth_pb2_grpc.AuthServiceStub(grpc.insecure_channel(f"127.0.0.1:{p}")) for p in ports)
    meta = (("authorization", f"Bearer {ADMIN}"),)
    emb = common_pb2.Embedding(**{**probe, "values": _units(np.random.default_rng(7), 1)[0]})

    def call(stub, method, req):
        return getattr(stub, method)(
            sign(f"/kfaar.v1.AuthService/{method}", req, "bench", key), metadata=meta, timeout=10
        )

    def found() -> bool:
        return bool(call(b, "Identify", auth_pb2.IdentifyRequest(probe=emb)).candidates)

    delays = []
    for _ in range(trials):
        call(a, "Enroll", auth_pb2.EnrollRequest(subject_id="r-0", templates=[emb]))
        while not found():
            time.sleep(0.001)
        call(a, "Revoke", auth_pb2.RevokeRequest(subject_id="r-0"))
        t0 = time.perf_counter()
        while found():
            pass
        delays.append(time.perf_counter() - t0)
    return np.asarray(delays)


def seed_templates(url: str, n: int, model: str, space: int, rng: np.random.Generator) -> None:
    """Add ``n`` synthetic templates with COPY (one subject each)."""
    import psycopg

    with psycopg.connect(url) as conn, conn.cursor() as cur:
        sql = "COPY templates (subject_id, model, space, vector, created) FROM STDIN"
        with cur.copy(sql) as copy:
            for start in range(0, n, 50_000):
                vecs = _units(rng, min(50_000, n - start))
                for i, v in enumerate(vecs):
                    copy.write_row((f"g-{start + i}", model, space, v.tobytes(), 0.0))


def former_load_s(url: str, model: str, space: int) -> float:
    """Time the gallery load as it was: one query, every row decoded on its own."""
    import psycopg

    t0 = time.perf_counter()
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT subject_id, vector FROM templates WHERE model = %s AND space = %s ORDER BY id",
            (model, space),
        ).fetchall()
    np.array([np.frombuffer(v, np.float32) for _, v in rows], np.float32).reshape(-1, 128)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="per load run (default 5)")
    p.add_argument("--replicas", default="1,2,4")
    p.add_argument("--concurrency", default="16,64")
    p.add_argument("--gallery", type=int, default=10_000, help="templates Identify searches")
    p.add_argument("--trials", type=int, default=100, help="revocations timed")
    p.add_argument("--sizes", default="100000,1000000", help="galleries for start-up ('' skips)")
    args = p.parse_args()
    try:
        counts = [int(x) for x in args.replicas.split(",") if x]
        concs = [int(x) for x in args.concurrency.split(",")]
        sizes = [int(x) for x in args.sizes.split(",") if x]
    except ValueError:
        p.error("--replicas, --concurrency and --sizes take comma-separated integers")
    w, rng = sys.stdout.write, np.random.default_rng(0)
    policy = Policy.from_bundle(Bundle.load())
    space = min(s for s in policy.thresholds if s != common_pb2.EMBEDDING_SPACE_RECOVERED)
    name, version = policy.model.split("/")
    probe_vec = _units(rng, 1)
    probe = {"values": probe_vec[0].tolist(), "space": space,
             "model": common_pb2.ModelVersion(name=name, version=version)}  # fmt: skip
    pg = PostgresServer()
    pg.start()
    url = f"{pg.url}/postgres"
    key = nacl.signing.SigningKey(b"k" * 32)
    store = PostgresStore(url)
    store.put_device("bench", key.verify_key.encode())
    store.put_token("bench", token_hash(TOKEN))
    store.enroll("s-0", policy.model, space, probe_vec)
    store.enroll("g", policy.model, space, _units(rng, 1))
    store.close()
    seed_templates(url, args.gallery, policy.model, space, rng)
    work = Path(tempfile.mkdtemp())
    # The gallery is seeded straight into the tables, without tags: measure unsigned.
    flags = ("--db-url", url, "--allow-unsigned-store", "--guess-budgets", ROOMY,
             "--db-pool", "2,32")  # fmt: skip
    try:
        rows = []
        for count in counts:
            servers = [Server(work, _free_port(), args=flags, name=f"r{i}") for i in range(count)]
            for s in servers:
                s.start()
            ports = [s.port for s in servers]
            load(ports, "Verify", probe, 4, 0.5, b"k" * 32)  # warm channels and pools
            for method in ("Verify", "Identify"):
                for conc in concs:
                    pids = [s.proc.pid for s in servers]
                    pg_pids = _postgres_pids(pg.data)
                    cpu0 = _cpu_s(pids), _cpu_s(pg_pids)
                    qps, p50, p99, errors, client_cpu = load(
                        ports, method, probe, conc, args.seconds, b"k" * 32
                    )
                    pg_pids = sorted(set(pg_pids) | set(_postgres_pids(pg.data)))
                    cpu = _cpu_s(pids) - cpu0[0], _cpu_s(pg_pids) - cpu0[1]
                    rows.append((method, conc, count, qps, p50, p99, errors, *cpu, client_cpu))
            if count == 2:
                reach = revocation_reach(ports, probe, args.trials, key)
            for server in servers:
                server.stop()
        base = {(m, c): q for m, c, n, q, *_ in rows if n == counts[0]}
        if rows:
            w(f"| method | concurrency | replicas | calls/s | vs {counts[0]} | p50 ms | p99 ms | "
              "errors | CPU s: replicas | PostgreSQL | clients |\n")  # fmt: skip
            w("|---" * 11 + "|\n")
            for m, c, n, q, p50, p99, err, rcpu, pcpu, ccpu in sorted(rows):
                ratio = q / base[(m, c)]
                w(f"| {m} | {c} | {n} | {q:.0f} | {ratio:.2f}x | {p50:.2f} | {p99:.2f} | "
                  f"{err} | {rcpu:.1f} | {pcpu:.1f} | {ccpu:.1f} |\n")  # fmt: skip
            w(f"\n{os.cpu_count()} CPU cores; {args.seconds:g} s per run; Identify searches "
              f"{args.gallery + 2:,} templates.\n")  # fmt: skip
        if 2 in counts:
            w("\n| Revoke on one replica until Identify on the other stops matching | p50 ms "
              "| p99 ms | max ms |\n|---|---|---|---|\n")  # fmt: skip
            w(f"| {len(reach)} trials | {np.percentile(reach, 50) * 1000:.1f} | "
              f"{np.percentile(reach, 99) * 1000:.1f} | {reach.max() * 1000:.1f} |\n")  # fmt: skip
        if sizes:
            w("\n| templates | replica start-up s | RSS MB | MB per million | gallery load s | "
              "former gallery load s |\n|---|---|---|---|---|---|\n")  # fmt: skip
        have = args.gallery + 2
        for size in sizes:
            seed_templates(url, size - have, policy.model, space, rng)
            have = size
            former = former_load_s(url, policy.model, space)
            store = PostgresStore(url)
            t0 = time.perf_counter()
            store.gallery(policy.model, space)
            now = time.perf_counter() - t0
            store.close()
            exact = ("--ann-min-templates", str(10 * size))  # start-up of the exact index
            server = Server(work, _free_port(), args=(*flags, *exact), name=f"start-{size}")
            t0 = time.perf_counter()
            server.start()
            took = time.perf_counter() - t0
            rss = rss_mb(server.proc.pid)
            server.stop()
            w(f"| {size:,} | {took:.1f} | {rss:.0f} | {rss / size * 1e6:.0f} | {now:.1f} | "
              f"{former:.1f} |\n")  # fmt: skip
    finally:
        pg.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
