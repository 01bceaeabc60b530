"""Issue 20's attacks, tries and what got through, against this tree or a baseline checkout.

Each attack runs against a real loopback service (SQLite) with the default guess budgets:

- take-over inside a scope: a camera of alice's scope whose own token may enroll and
  rekey adds its face to alice, verifies as her, rekeys her; then alice's own door tries;
- the device-declared threshold: a probe at cosine 0.94 (single 0.93, fused 0.95)
  declaring 0, 1 and 3 fused views;
- matches interleaved with misses on the same subject from one device;
- 8 waves of 40 misses sent at once, each on one subject, from one device (16 workers);
- six strangers flooding Identify with a shared token, then the owner's proven door;
- a 0-byte database at `kfaar serve`;
- a template swapped on disk, then Verify after a restart;
- the audit rows a refusal flood adds per second.

The script uses only what both trees have, so that a baseline from ``git archive`` runs it:
``PYTHONPATH=BASE python benchmarks/attacks_round2.py`` (run from BASE). Prints one
Markdown row per attack. Run: python benchmarks/attacks_round2.py
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import nacl.signing
import numpy as np

from auth_service.proof import sign
from auth_service.server import ServerConfig, start
from auth_service.servicer import Policy
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc, common_pb2

ADMIN = "bench-admin"
VIRTUAL = common_pb2.EMBEDDING_SPACE_VIRTUAL
MODEL = common_pb2.ModelVersion(name="hpvfg", version="1.0.0")
META = (("authorization", f"Bearer {ADMIN}"),)
WRITER = ["Enroll", "Verify", "Identify", "Rekey"]


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(128)
    return v / np.linalg.norm(v)


def emb(v: np.ndarray, views: int = 0) -> common_pb2.Embedding:
    return common_pb2.Embedding(values=list(v), model=MODEL, space=VIRTUAL, fused_views=views)


def at_cosine(v: np.ndarray, c: float, seed: int) -> np.ndarray:
    u = unit(seed)
    u -= (u @ v) * v
    return c * v + np.sqrt(1 - c * c) * u / np.linalg.norm(u)


class Device:
    def __init__(self, port: int, name: str, scope: str = "", methods=WRITER, token=None):
        admin = auth_pb2_grpc.AdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        self.key, self.name = nacl.signing.SigningKey.generate(), name
        reg = auth_pb2.RegisterDeviceRequest(
            device_id=name, verify_key=self.key.verify_key.encode(), scope=scope
        )
        admin.RegisterDevice(reg, metadata=META)
        if token is None:
            grant = auth_pb2.CreateAppTokenRequest(
                app_name=f"app-{name}", scope=scope, device_ids=[name], methods=methods
            )
            token = admin.CreateAppToken(grant, metadata=META).token
        self.stub = auth_pb2_grpc.AuthServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        self.meta = (("authorization", f"Bearer {token}"),)

    def send(self, method: str, req):
        """Return the reply, or the status code of a refusal."""
        sign(f"/kfaar.v1.AuthService/{method}", req, self.name, self.key)
        try:
            return getattr(self.stub, method)(req, metadata=self.meta, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()

    def verify(self, subject: str, v: np.ndarray, views: int = 0) -> bool:
        out = self.send("Verify", auth_pb2.VerifyRequest(subject_id=subject, probe=emb(v, views)))
        return not isinstance(out, grpc.StatusCode) and out.match


def shared_token(port: int, app: str) -> str:
    admin = auth_pb2_grpc.AdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    req = auth_pb2.CreateAppTokenRequest(app_name=app)
    if "shared" in auth_pb2.CreateAppTokenRequest.DESCRIPTOR.fields_by_name:
        req.shared = True  # this tree: sharing is opt-in; the baseline shared unbound tokens
    return admin.CreateAppToken(req, metadata=META).token


def serve(db: Path, policy: Policy | None = None):
    cfg = ServerConfig(
        db, policy or Policy("hpvfg/1.0.0", {VIRTUAL: 0.93}), port=0, admin_token=ADMIN
    )
    return cfg, start(cfg)


def takeover(work: Path) -> tuple:
    _, run = serve(work / "a.db")
    owner, rogue = Device(run.port, "door-a", "hq"), Device(run.port, "door-b", "hq")
    alice, mine = [unit(i) for i in range(5)], unit(99)
    owner.send(
        "Enroll", auth_pb2.EnrollRequest(subject_id="alice", templates=[emb(v) for v in alice])
    )
    added = rogue.send("Enroll", auth_pb2.EnrollRequest(subject_id="alice", templates=[emb(mine)]))
    passed = sum(rogue.verify("alice", mine) for _ in range(20))
    named = rogue.send("Identify", auth_pb2.IdentifyRequest(probe=emb(mine)))
    named = not isinstance(named, grpc.StatusCode) and bool(named.candidates)
    rekeyed = rogue.send("Rekey", auth_pb2.RekeyRequest(subject_id="alice", templates=[emb(mine)]))
    door = sum(owner.verify("alice", v) for v in alice)
    run.stop(0)
    ok = lambda r: not isinstance(r, grpc.StatusCode)  # noqa: E731
    return (
        "take-over inside a scope (enroll + 20 Verify + Identify + rekey)",
        23,
        f"{int(ok(added)) + passed + int(named) + int(ok(rekeyed))}",
        f"alice's own door afterwards: {door} of 5 admitted",
    )


def declared_views(work: Path) -> tuple:
    policy = Policy("hpvfg/1.0.0", {VIRTUAL: 0.93}, 1e-3, {VIRTUAL: 0.95})
    _, run = serve(work / "b.db", policy)
    door = Device(run.port, "door")
    t = unit(1)
    door.send("Enroll", auth_pb2.EnrollRequest(subject_id="alice", templates=[emb(t)]))
    got = {views: door.verify("alice", at_cosine(t, 0.94, 7), views) for views in (0, 1, 3)}
    run.stop(0)
    return (
        "probe at cosine 0.94 declaring 0 / 1 / 3 views (single 0.93, fused 0.95)",
        3,
        str(sum(got.values())),
        "accepted: " + " / ".join(str(int(got[v])) for v in (0, 1, 3)),
    )


def interleaved(work: Path) -> tuple:
    _, run = serve(work / "c.db")
    cam = Device(run.port, "cam")
    me = unit(1)
    cam.send("Enroll", auth_pb2.EnrollRequest(subject_id="me", templates=[emb(me)]))
    misses = 0
    for i in range(200):
        if i % 2:
            cam.verify("me", me)
        else:
            out = cam.send(
                "Verify", auth_pb2.VerifyRequest(subject_id="me", probe=emb(unit(1000 + i)))
            )
            misses += not isinstance(out, grpc.StatusCode) and not out.match
    run.stop(0)
    return (
        "100 misses interleaved with 100 matches on one subject",
        100,
        str(misses),
        "misses evaluated (the pair budget is 5)",
    )


def wave(cam: Device, subject: str, n: int = 40) -> int:
    """Send ``n`` signed misses on ``subject`` at once; return how many were evaluated."""
    start = threading.Barrier(n)

    def one(i: int) -> bool:
        req = auth_pb2.VerifyRequest(subject_id=subject, probe=emb(unit(99 + i)))
        sign("/kfaar.v1.AuthService/Verify", req, cam.name, cam.key)
        start.wait()  # all signed, then all sent at once
        try:
            return cam.stub.Verify(req, metadata=cam.meta, timeout=10) is not None
        except grpc.RpcError:
            return False  # refused: RESOURCE_EXHAUSTED

    with ThreadPoolExecutor(n) as pool:
        return sum(pool.map(one, range(n)))


def concurrent_misses(work: Path) -> tuple:
    _, run = serve(work / "g.db")
    door, cam = Device(run.port, "door"), Device(run.port, "cam")
    for s in range(8):
        door.send("Enroll", auth_pb2.EnrollRequest(subject_id=f"s{s}", templates=[emb(unit(s))]))
    waves = [wave(cam, f"s{s}") for s in range(8)]  # 8 x 5 misses fit the device budget (50)
    run.stop(0)
    most = f"misses evaluated; most in one wave {max(waves)} (the pair burst is 5)"
    return ("8 waves of 40 misses at once, one subject each, one device", 320, sum(waves), most)


def stranger_flood(work: Path) -> tuple:
    _, run = serve(work / "d.db")
    Device(run.port, "kiosk").send(
        "Enroll", auth_pb2.EnrollRequest(subject_id="alice", templates=[emb(unit(1))])
    )
    token = shared_token(run.port, "site")
    door = Device(run.port, "door", methods=None, token=token)
    door.verify("alice", unit(1))  # proven
    strangers = [Device(run.port, f"s-{i}", token=token) for i in range(6)]
    for rnd in range(60):
        for s in strangers:
            s.send(
                "Identify", auth_pb2.IdentifyRequest(probe=emb(unit(5000 + rnd * 7 + len(s.name))))
            )
    admitted = sum(door.verify("alice", unit(1)) for _ in range(20))
    run.stop(0)
    return (
        "6 strangers x 60 Identify on a shared token, then the owner's door x 20",
        20,
        str(admitted),
        "owner's door admitted (higher is right)",
    )


def empty_db(work: Path) -> tuple:
    db = work / "empty.db"
    db.write_bytes(b"")
    cmd = [
        sys.executable,
        "-m",
        "edge_agent.cli",
        "serve",
        "--insecure",
        "--port",
        "0",
        "--db",
        str(db),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KFAAR_DB_CREATE": ""},
    )
    line = proc.stdout.readline()
    started = line.startswith("serving on")
    proc.kill()
    proc.wait()
    return (
        "kfaar serve on a 0-byte database",
        1,
        str(int(started)),
        "started and reported SERVING" if started else "refused (exit 2, names kfaar db init)",
    )


def swapped(work: Path) -> tuple:
    cfg, run = serve(work / "e.db")
    door = Device(run.port, "door")
    door.send("Enroll", auth_pb2.EnrollRequest(subject_id="alice", templates=[emb(unit(1))]))
    door.send("Enroll", auth_pb2.EnrollRequest(subject_id="mallory", templates=[emb(unit(2))]))
    run.stop(0)
    run.store.close()
    con = sqlite3.connect(work / "e.db", isolation_level=None)
    (vec,) = con.execute("SELECT vector FROM templates WHERE subject_id = 'mallory'").fetchone()
    con.execute("UPDATE templates SET vector = ? WHERE subject_id = 'alice'", (vec,))
    con.close()
    run = start(cfg)
    again = Device(run.port, "door-2")
    passed = again.verify("alice", unit(2))
    run.stop(0)
    return ("template swapped on disk, Verify after a restart", 1, str(int(passed)), "")


def audit_growth(work: Path) -> tuple:
    _, run = serve(work / "f.db")
    cam = Device(run.port, "cam", methods=["Verify"])
    before = len(run.store.audit_log())
    started, calls = time.monotonic(), 0
    while time.monotonic() - started < 3.0:
        cam.send("Enroll", auth_pb2.EnrollRequest(subject_id="x", templates=[emb(unit(3))]))
        cam.send("Verify", auth_pb2.VerifyRequest(subject_id="nobody", probe=emb(unit(4))))
        calls += 2
    elapsed = time.monotonic() - started
    rows = len(run.store.audit_log()) - before
    run.stop(0)
    return (
        "refusal flood from one device (3 s)",
        calls,
        f"{rows} rows",
        f"{rows / elapsed:.1f} audit rows/s for {calls / elapsed:.0f} refused calls/s",
    )


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    work = Path(tempfile.mkdtemp())
    print("| attack | tries | got through | notes |\n|---|---|---|---|")
    for attack in (
        takeover,
        declared_views,
        interleaved,
        concurrent_misses,
        stranger_flood,
        empty_db,
        swapped,
        audit_growth,
    ):
        row = attack(work)
        print("| " + " | ".join(str(c) for c in row) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
