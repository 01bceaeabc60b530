"""Service throughput and latency, against an empty-handler gRPC server in the same run.

The server runs in its own process; client threads send pre-signed requests (signing is
the edge's cost, not the service's). Verify is measured at concurrency 1, 16 and 64;
Identify at gallery sizes of 10k and 100k templates.

Run: python benchmarks/service.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import nacl.signing
import numpy as np

from auth_service import service_key
from auth_service.limits import ResourceLimits
from auth_service.proof import sign
from auth_service.ratelimit import Budget, GuessBudgets
from auth_service.server import ServerConfig, start
from auth_service.servicer import Policy
from auth_service.store_sqlite import SqliteStore
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc, common_pb2

MODEL = common_pb2.ModelVersion(name="hpvfg", version="1.0.0")
VIRTUAL = common_pb2.EMBEDDING_SPACE_VIRTUAL
ADMIN = "bench-admin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 128)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class Empty(auth_pb2_grpc.AuthServiceServicer):
    def Verify(self, request, context):
        return auth_pb2.VerifyReply()


def serve_empty(port: int, ready) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    auth_pb2_grpc.add_AuthServiceServicer_to_server(Empty(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    ready.set()
    server.wait_for_termination()


def serve_kfaar(port: int, db: str, ready) -> None:
    # One device verifies one subject up to 64 calls at once: more in flight than the pair
    # burst (5) lets in, since each call reserves a unit until it is decided. Roomy budgets
    # still reserve and refund every call, so their cost is measured; never a refusal.
    # Likewise a call rate one device never reaches (it sends hundreds a second).
    roomy = GuessBudgets(*(Budget(1e9, 1e9) for _ in range(4)))
    rate = ResourceLimits(device_rate=1e9, device_burst=10**9)
    cfg = ServerConfig(Path(db), Policy("hpvfg/1.0.0", {VIRTUAL: 0.9454}), port=port,
                       admin_token=ADMIN, guess=roomy, limits=rate)  # fmt: skip
    running = start(cfg)  # keep the reference: a collected grpc.Server stops
    ready.set()
    running.server.wait_for_termination()


def run_load(port: int, requests: list, method: str, token: str, concurrency: int, seconds: float):
    """Send requests from ``concurrency`` threads; return (calls/s, p50, p99 ms, errors)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = getattr(auth_pb2_grpc.AuthServiceStub(channel), method)
    meta = (("authorization", f"Bearer {token}"),)
    latencies: list[float] = []
    errors = [0]
    lock, stop, cursor = threading.Lock(), time.perf_counter() + seconds, iter(range(10**9))

    def worker() -> None:
        mine = []
        while time.perf_counter() < stop:
            i = next(cursor)
            if i >= len(requests):  # every nonce is used once: never replay
                break
            req = requests[i]
            t0 = time.perf_counter()
            try:
                call(req, metadata=meta, timeout=10)
            except grpc.RpcError:  # counted, not timed: a refusal is not throughput
                with lock:
                    errors[0] += 1
                continue
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    lat = np.array(latencies or [float("nan")]) * 1000
    channel.close()
    p50, p99 = np.percentile(lat, [50, 99])
    return len(latencies) / elapsed, float(p50), float(p99), errors[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    ctx, rng = mp.get_context("spawn"), np.random.default_rng(0)
    key = nacl.signing.SigningKey.generate()
    tmp = tempfile.mkdtemp()
    db = f"{tmp}/bench.db"
    store = SqliteStore(db)
    # Tag templates with the key the server will load beside the database (else it
    # refuses them as tampered).
    store.service_key = service_key.create(service_key.default_path(db))
    store.put_device("bench", key.verify_key.encode())
    from auth_service.interceptor import token_hash

    store.put_token("bench", token_hash("bench-token"))
    probe_vecs = unit(rng, 1)
    store.enroll("s-0", "hpvfg/1.0.0", VIRTUAL, probe_vecs)
    store.close()

    def verify_requests(n: int) -> list:
        out = []
        for _ in range(n):
            emb = common_pb2.Embedding(values=probe_vecs[0].tolist(), space=VIRTUAL, model=MODEL)
            req = auth_pb2.VerifyRequest(subject_id="s-0", probe=emb)
            out.append(sign("/kfaar.v1.AuthService/Verify", req, "bench", key))
        return out

    rows = []
    servers = [("empty handler", serve_empty, ()), ("kfaar Verify", serve_kfaar, (db,))]
    for name, target, extra in servers:
        port, ready = free_port(), ctx.Event()
        proc = ctx.Process(target=target, args=(port, *extra, ready), daemon=True)
        proc.start()
        ready.wait(30)
        for conc in (1, 16, 64):
            reqs = verify_requests(int(10_000 * args.seconds))
            rows.append(
                (name, conc, *run_load(port, reqs, "Verify", "bench-token", conc, args.seconds))
            )
        proc.terminate()
        proc.join()

    identify = []
    for size in (10_000, 100_000):
        s = SqliteStore(db)
        s.service_key = service_key.load(service_key.default_path(db))
        have = len(s.gallery("hpvfg/1.0.0", VIRTUAL).subjects)
        vecs = unit(rng, size - have)
        for i in range(0, len(vecs), 5000):
            s.enroll(f"g-{size}-{i}", "hpvfg/1.0.0", VIRTUAL, vecs[i : i + 5000])
        s.close()
        port, ready = free_port(), ctx.Event()
        proc = ctx.Process(target=serve_kfaar, args=(port, db, ready), daemon=True)
        proc.start()
        ready.wait(30)
        reqs = []
        emb = common_pb2.Embedding(values=probe_vecs[0].tolist(), space=VIRTUAL, model=MODEL)
        for _ in range(int(1000 * args.seconds)):
            req = auth_pb2.IdentifyRequest(probe=emb, top_k=5)
            reqs.append(sign("/kfaar.v1.AuthService/Identify", req, "bench", key))
        run_load(port, reqs[:1], "Identify", "bench-token", 1, 0.01)  # load the index once
        identify.append(
            (size, *run_load(port, reqs[1:], "Identify", "bench-token", 1, args.seconds))
        )
        proc.terminate()
        proc.join()

    base = {c: qps for n, c, qps, *_ in rows if n == "empty handler"}
    w = sys.stdout.write
    w("| server | concurrency | calls/s | p50 ms | p99 ms | errors | vs empty handler |\n")
    w("|---|---|---|---|---|---|---|\n")
    for name, conc, qps, p50, p99, err in rows:
        ratio = qps / base[conc]
        w(f"| {name} | {conc} | {qps:.0f} | {p50:.2f} | {p99:.2f} | {err} | {ratio:.2f}x |\n")
    w("\n| Identify, gallery | calls/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|\n")
    for size, qps, p50, p99, err in identify:
        w(f"| {size:,} templates | {qps:.0f} | {p50:.2f} | {p99:.2f} | {err} |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
