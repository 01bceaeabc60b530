"""``kfaar demo``: the whole system on loopback, on the bundled sample faces.

It starts the authentication service with SQLite, registers this edge device, enrolls
the sample people who have two photos (first photo, each under their own key), then
streams the held-out photos as a camera would: each second photo claims its owner
(genuine), and each photo of an unenrolled person claims an enrolled subject (impostor).
"""

from __future__ import annotations

import json
import secrets
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import grpc
import nacl.utils
import numpy as np

from auth_service.server import ServerConfig, start
from auth_service.servicer import Policy
from edge_agent.assets import asset_path
from edge_agent.client import AuthClient, ClientConfig, Outbox
from edge_agent.face.image_io import load_image
from edge_agent.hpvfg import HpvfgAnonymizer
from edge_agent.keystore import Keystore
from edge_agent.pipeline import EdgePipeline
from edge_agent.progress import progress
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc, common_pb2

DEVICE = "demo-camera"


def sample_people(root: Path) -> dict[str, list[Path]]:
    people = defaultdict(list)
    for p in sorted(root.glob("*/*.jpg")):
        people[p.parent.name].append(p)
    return dict(people)


def side_by_side(original: np.ndarray, virtual: np.ndarray, label: str) -> np.ndarray:
    pair = np.concatenate([original, virtual], axis=1)
    cv2.putText(pair, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    return pair


def run_demo(
    out: Path, precision: str = "fp32", interceptors: tuple = (), keys: Keystore | None = None
) -> dict:
    """Run the demo into ``out``; return the summary (also written as summary.json).

    ``keys`` (default: a throwaway keystore) must not hold the sample people yet.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "frames").mkdir(exist_ok=True)
    pipeline = EdgePipeline(HpvfgAnonymizer(precision=precision))
    policy = Policy.from_bundle(pipeline.anonymizer.bundle)
    people = sample_people(asset_path("sample_faces"))
    enrolled = sorted(n for n, photos in people.items() if len(photos) >= 2)
    strangers = sorted(n for n, photos in people.items() if len(photos) == 1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        keys = keys or Keystore.create(work / "keystore.json", device_secret=nacl.utils.random(32))
        admin_token = secrets.token_urlsafe(32)
        running = start(ServerConfig(work / "kfaar.db", policy, port=0, admin_token=admin_token))
        try:
            admin = auth_pb2_grpc.AdminServiceStub(
                grpc.insecure_channel(f"127.0.0.1:{running.port}")
            )
            meta = (("authorization", f"Bearer {admin_token}"),)
            verify_key = keys.signing_key().verify_key.encode()
            admin.RegisterDevice(
                auth_pb2.RegisterDeviceRequest(device_id=DEVICE, verify_key=verify_key),
                metadata=meta,
            )
            token = admin.CreateAppToken(
                auth_pb2.CreateAppTokenRequest(app_name="demo"), metadata=meta
            ).token
            client = AuthClient(
                ClientConfig(f"127.0.0.1:{running.port}", token, DEVICE),
                keys.signing_key(),
                Outbox(work / "outbox.db"),
                interceptors,
            )

            for name in progress(enrolled, desc="enroll"):
                vf = pipeline.virtual(load_image(people[name][0]), keys.add(name))
                req = auth_pb2.EnrollRequest(
                    subject_id=name, templates=[pipeline.message(vf.embedding)]
                )
                client.send_or_queue("Enroll", req)

            attempts = [(people[n][1], n, True) for n in enrolled]
            attempts += [
                (people[s][0], enrolled[i % len(enrolled)], False) for i, s in enumerate(strangers)
            ]
            rows, latencies, started = [], [], []

            def probes():
                for i, (photo, claim, _) in enumerate(attempts):
                    started.append(time.perf_counter())
                    image = load_image(photo)
                    vf = pipeline.virtual(image, keys.key(claim))
                    label = f"{photo.parent.name} claims {claim}"
                    cv2.imwrite(
                        str(out / "frames" / f"{i:02d}.jpg"), side_by_side(image, vf.image, label)
                    )
                    req = auth_pb2.VerifyRequest(
                        subject_id=claim, probe=pipeline.message(vf.embedding)
                    )
                    yield auth_pb2.AuthProbe(verify=req, sequence=i)

            for decision in progress(client.stream(probes()), total=len(attempts), desc="camera"):
                i = decision.sequence
                latencies.append((time.perf_counter() - started[i]) * 1000)
                photo, claim, genuine = attempts[i]
                accepted = decision.HasField("verify") and decision.verify.match
                rows.append((photo.parent.name, claim, genuine, accepted, decision.error_message))
            client.close()
        finally:
            running.stop(0)
    counts = {
        "genuine_accepts": sum(g and a for _, _, g, a, _ in rows),
        "genuine_rejects": sum(g and not a for _, _, g, a, _ in rows),
        "impostor_accepts": sum(not g and a for _, _, g, a, _ in rows),
        "impostor_rejects": sum(not g and not a for _, _, g, a, _ in rows),
    }
    summary = {
        "model": f"hpvfg/{pipeline.model.version}:{precision}",
        "space": "VIRTUAL",
        "threshold": policy.thresholds[common_pb2.EMBEDDING_SPACE_VIRTUAL],
        "enrolled": len(enrolled),
        "attempts": len(rows),
        **counts,
        "median_ms_per_frame": statistics.median(latencies),
        "decisions": [
            {"person": p, "claims": c, "genuine": g, "accepted": a, **({"error": e} if e else {})}
            for p, c, g, a, e in rows
        ],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def print_table(summary: dict) -> None:
    """Print one line per attempt, then the counts and the median latency."""
    w = sys.stdout.write
    w(f"{'person':<20} {'claims':<20} {'kind':<9} decision\n")
    for d in summary["decisions"]:
        kind = "genuine" if d["genuine"] else "impostor"
        decision = "ACCEPT" if d["accepted"] else "reject"
        w(f"{d['person']:<20} {d['claims']:<20} {kind:<9} {decision}\n")
    counts = ", ".join(
        f"{k.replace('_', ' ')} {summary[k]}"
        for k in ("genuine_accepts", "genuine_rejects", "impostor_accepts", "impostor_rejects")
    )
    w(f"\n{counts}\n")
    w(
        f"median {summary['median_ms_per_frame']:.0f} ms per frame; {summary['model']}, "
        f"{summary['space']} threshold {summary['threshold']}\n"
    )


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole system on loopback on the bundled sample faces",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    p.set_defaults(handler=_run)


def _run(args) -> int:
    summary = run_demo(args.out, args.precision)
    print_table(summary)
    sys.stdout.write(f"frames: {args.out / 'frames'}, summary: {args.out / 'summary.json'}\n")
    return 0
