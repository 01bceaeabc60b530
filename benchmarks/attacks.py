"""Issue 13's online attacks against a real service with the default guess budgets.

A loopback server (the default ServerConfig, so the default budgets and a SQLite store)
is attacked by registered devices with valid tokens, as a stolen camera would:

- an Identify flood of random probes, for ``--seconds``;
- Identify from a device that Verify has locked out;
- misses with one matching Verify every 45 misses (the issue's interleaving attacker);
- strangers' devices failing on alice until refused, then alice's own door;
- signed Enroll and Verify requests replayed after a restart on the same database.

Prints a Markdown table: attempts made, answered, and what got through wrongly.
Run: python benchmarks/attacks.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
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


def emb(seed: int) -> common_pb2.Embedding:
    v = np.random.default_rng(seed).standard_normal(128)
    return common_pb2.Embedding(values=list(v / np.linalg.norm(v)), model=MODEL, space=VIRTUAL)


class Device:
    def __init__(self, port: int, name: str) -> None:
        admin = auth_pb2_grpc.AdminServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        self.key, self.name = nacl.signing.SigningKey.generate(), name
        vk = self.key.verify_key.encode()
        admin.RegisterDevice(
            auth_pb2.RegisterDeviceRequest(device_id=name, verify_key=vk), metadata=META
        )
        # Enrolment is a grant of its own since issue 20 (the default is verify-only).
        grant = auth_pb2.CreateAppTokenRequest(
            app_name=f"app-{name}", device_ids=[name], methods=["Enroll", "Verify", "Identify"]
        )
        token = admin.CreateAppToken(grant, metadata=META).token
        self.connect(port, token)

    def connect(self, port: int, token: str | None = None) -> None:
        self.token = token or self.token
        self.stub = auth_pb2_grpc.AuthServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        self.meta = (("authorization", f"Bearer {self.token}"),)

    def send(self, method: str, req, signed: bool = True):
        """Return the reply, or the status code of a refusal."""
        if signed:
            sign(f"/kfaar.v1.AuthService/{method}", req, self.name, self.key)
        try:
            return getattr(self.stub, method)(req, metadata=self.meta, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="Identify flood length")
    args = parser.parse_args()
    cfg = ServerConfig(
        Path(tempfile.mkdtemp()) / "kfaar.db",
        Policy("hpvfg/1.0.0", {VIRTUAL: 0.93}),
        port=0,
        admin_token=ADMIN,
    )
    running = start(cfg)
    port = running.port
    rows = []
    kiosk = Device(port, "kiosk")
    for i in range(50):
        kiosk.send("Enroll", auth_pb2.EnrollRequest(subject_id=f"s-{i}", templates=[emb(i)]))

    # 1. Identify flood of random probes from one device.
    cam, sent, answered, wrong = Device(port, "flood-cam"), 0, 0, 0
    stop = time.monotonic() + args.seconds
    while time.monotonic() < stop:
        out = cam.send("Identify", auth_pb2.IdentifyRequest(probe=emb(10_000 + sent), top_k=10))
        sent += 1
        if not isinstance(out, grpc.StatusCode):
            answered += 1
            wrong += len(out.candidates)
    per_min = sent / args.seconds * 60
    rows.append(("Identify flood, random probes", sent, answered, wrong, f"{per_min:.0f} sent/min"))

    # 2. Identify from a device locked out of Verify.
    cam, sent = Device(port, "locked-cam"), 0
    while not isinstance(
        cam.send(
            "Verify", auth_pb2.VerifyRequest(subject_id=f"s-{sent % 50}", probe=emb(40_000 + sent))
        ),
        grpc.StatusCode,
    ):
        sent += 1
    later = [
        cam.send("Identify", auth_pb2.IdentifyRequest(probe=emb(20_000 + i))) for i in range(200)
    ]
    ok = sum(not isinstance(r, grpc.StatusCode) for r in later)
    rows.append(("Identify after a Verify lock-out", 200, ok, 0, f"after {sent} Verify misses"))

    # 3. One success every 45 misses.
    cam, misses, tried, stopped = Device(port, "interleaving-cam"), 0, 0, False
    cam.send("Enroll", auth_pb2.EnrollRequest(subject_id="me", templates=[emb(7)]))
    for i in range(5000):
        tried += 1
        if i % 46 == 45:
            cam.send("Verify", auth_pb2.VerifyRequest(subject_id="me", probe=emb(7)))
            continue
        out = cam.send("Identify", auth_pb2.IdentifyRequest(probe=emb(30_000 + i)))
        if isinstance(out, grpc.StatusCode):
            stopped = True
            break
        misses += 1
    rows.append(
        (
            "misses with 1 success per 45",
            tried,
            misses,
            0,
            "refused from then on" if stopped else "never refused",
        )
    )

    # 4. Strangers try alice until refused; then alice's own door (which matched before).
    door = Device(port, "alice-door")
    door.send("Enroll", auth_pb2.EnrollRequest(subject_id="alice", templates=[emb(1)]))
    door.send("Verify", auth_pb2.VerifyRequest(subject_id="alice", probe=emb(1)))
    tries = answered = 0
    for k in range(6):
        stranger = Device(port, f"stranger-{k}")
        for j in range(30):
            tries += 1
            out = stranger.send(
                "Verify", auth_pb2.VerifyRequest(subject_id="alice", probe=emb(50_000 + j))
            )
            answered += not isinstance(out, grpc.StatusCode)
    owner = door.send("Verify", auth_pb2.VerifyRequest(subject_id="alice", probe=emb(1)))
    owner_ok = not isinstance(owner, grpc.StatusCode) and owner.match
    note = f"owner afterwards: {'admitted' if owner_ok else owner}"
    rows.append(("6 strangers x 30 misses on alice", tries, answered, 0, note))

    # 5. Replays of signed Enroll and Verify across a restart.
    cam = Device(port, "replay-cam")
    enroll = auth_pb2.EnrollRequest(subject_id="r-1", templates=[emb(3)])
    verify = auth_pb2.VerifyRequest(subject_id="r-1", probe=emb(3))
    cam.send("Enroll", enroll)
    cam.send("Verify", verify)
    running.stop(0)
    running.store.close()
    cfg.port = port
    running = start(cfg)
    cam.connect(port)
    replays = [cam.send("Enroll", enroll, signed=False), cam.send("Verify", verify, signed=False)]
    accepted = sum(not isinstance(r, grpc.StatusCode) for r in replays)
    stored = running.store.subject_templates("r-1")[1].shape[0]
    rows.append(("replay after restart", 2, accepted, accepted, f"r-1 holds {stored} template(s)"))
    running.stop(0)

    print("| attack | attempts | answered | accepted wrongly | note |")
    print("|---|---|---|---|---|")
    for name, tries, answered, wrong, note in rows:
        print(f"| {name} | {tries} | {answered} | {wrong} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
