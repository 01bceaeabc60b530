"""``kfaar demo``: the whole system on loopback, on the bundled sample faces.

It starts the authentication service with SQLite, registers this edge device, enrolls
the sample people who have two photos (first photo, each under a fresh key of their own),
then presents the held-out photos as a camera would: each person's other photos claim
their owner (genuine), and each photo of an unenrolled person claims an enrolled subject,
under that subject's key (impostor). One fused request per attempt; a deliberately
blurred frame shows the quality gate, and a simulated print, a simulated screen replay
and a still photo against a random challenge show the liveness gate.
"""

from __future__ import annotations

import json
import secrets
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import grpc
import nacl.utils
import numpy as np

from auth_service.policy import DEFAULT_FAR, Policy, far_label
from auth_service.server import ServerConfig, start
from edge_agent.assets import asset_path
from edge_agent.attempts import Attempt, frame_quality
from edge_agent.client import AuthClient, ClientConfig, Outbox
from edge_agent.face.detect import NoFaceError
from edge_agent.face.image_io import load_image
from edge_agent.hpvfg import HpvfgAnonymizer
from edge_agent.keystore import Keystore
from edge_agent.liveness.demo_attacks import NOTE as ATTACK_NOTE
from edge_agent.liveness.demo_attacks import presentation_attacks
from edge_agent.pipeline import DEFAULT_SPACE, SPACES, EdgePipeline
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc

DEVICE = "demo-camera"
KINDS = ("genuine", "impostor", "quality check")


def sample_people(root: Path) -> dict[str, list[Path]]:
    people = defaultdict(list)
    for p in sorted(root.glob("*/*.jpg")):
        people[p.parent.name].append(p)
    return dict(people)


def side_by_side(original: np.ndarray, virtual: np.ndarray, label: str) -> np.ndarray:
    pair = np.concatenate([original, virtual], axis=1)
    cv2.putText(pair, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    return pair


@dataclass
class DemoAttempt:
    person: str
    claim: str
    kind: str  # one of KINDS
    frames: list[tuple[str, np.ndarray]]  # (label, image)
    attempt: Attempt = field(default_factory=lambda: Attempt(started=0.0))


def _attempts(people: dict[str, list[Path]], enrolled: list[str], strangers: list[str]):
    """Genuine attempts, impostor attempts, then one blurred frame for the quality gate."""
    out = [
        DemoAttempt(n, n, "genuine", [(p.name, load_image(p)) for p in people[n][1:]])
        for n in enrolled
    ]
    for i, s in enumerate(strangers):
        photos = [(p.name, load_image(p)) for p in people[s]]
        out.append(DemoAttempt(s, enrolled[i % len(enrolled)], "impostor", photos))
    first = people[enrolled[0]][-1]
    blurred = cv2.GaussianBlur(load_image(first), (0, 0), 4)
    out.append(
        DemoAttempt(enrolled[0], enrolled[0], "quality check", [(f"{first.name} blurred", blurred)])
    )
    return out


def _prepare(att: DemoAttempt, pipeline: EdgePipeline, key: bytes, out: Path, n: int) -> None:
    """Judge, anonymize and template every frame of an attempt; write its first frame."""
    for label, image in att.frames:
        try:
            face = pipeline.detector.primary(image)
        except NoFaceError:
            att.attempt.dropped.append((label, "no face found"))
            continue
        q = frame_quality(image, face)
        if q.reason is not None:
            att.attempt.dropped.append((label, q.reason))
            cv2.imwrite(
                str(out / f"{n:02d}.jpg"), side_by_side(image, image, f"dropped: {q.reason}")
            )
            continue
        vf = pipeline.render(image, face, key)
        att.attempt.labels.append(label)
        att.attempt.templates.append(vf.embedding)
        att.attempt.weights.append(q.weight)
        if len(att.attempt.labels) == 1:
            tag = f"{att.person} claims {att.claim}"
            cv2.imwrite(str(out / f"{n:02d}.jpg"), side_by_side(image, vf.image, tag))


def run_demo(
    out: Path,
    precision: str = "fp32",
    interceptors: tuple = (),
    keys: Keystore | None = None,
    space: str = DEFAULT_SPACE,
    far: float = DEFAULT_FAR,
) -> dict:
    """Run the demo into ``out``; return the summary (also written as summary.json).

    ``keys`` (default: a throwaway keystore) must not hold the sample people yet: every
    run makes fresh keys.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "frames").mkdir(exist_ok=True)
    for old in (out / "frames").glob("*.jpg"):
        old.unlink()
    pipeline = EdgePipeline(HpvfgAnonymizer(precision=precision), space=space)
    policy = Policy.from_bundle(pipeline.anonymizer.bundle, far=far)
    space_id = SPACES[space]
    threshold = policy.thresholds[space_id]
    people = sample_people(asset_path("sample_faces"))
    enrolled = sorted(n for n, photos in people.items() if len(photos) >= 2)
    strangers = sorted(n for n, photos in people.items() if len(photos) == 1)
    attempts = _attempts(people, enrolled, strangers)
    edge_ms = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        keys = keys or Keystore.create(work / "keystore.json", device_secret=nacl.utils.random(32))
        admin_token = secrets.token_urlsafe(32)
        running = start(ServerConfig(work / "kfaar.db", policy, port=0, admin_token=admin_token))
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
            admin = auth_pb2_grpc.AdminServiceStub(channel)
            meta = (("authorization", f"Bearer {admin_token}"),)
            verify_key = keys.signing_key().verify_key.encode()
            admin.RegisterDevice(
                # Its probes are single frames: decided at the single-frame threshold.
                auth_pb2.RegisterDeviceRequest(
                    device_id=DEVICE, verify_key=verify_key, single_view=True
                ),
                metadata=meta,
            )
            # The demo's camera calls with the admin token, so that replies carry the score
            # and the table can say by how much a rejection missed; apps get decisions only.
            client = AuthClient(
                ClientConfig(f"127.0.0.1:{running.port}", admin_token, DEVICE),
                keys.signing_key(),
                Outbox(work / "outbox.db"),
                interceptors,
            )
            for name in enrolled:
                vf = pipeline.virtual(load_image(people[name][0]), keys.add(name))
                req = auth_pb2.EnrollRequest(
                    subject_id=name, templates=[pipeline.message(vf.embedding)]
                )
                client.send_or_queue("Enroll", req)

            sent = []
            for n, att in enumerate(attempts):
                started = time.perf_counter()
                _prepare(att, pipeline, keys.key(att.claim), out / "frames", n)
                edge_ms.append((time.perf_counter() - started) * 1000 / len(att.frames))
                if att.attempt.usable:
                    probe = pipeline.message(*att.attempt.fused())
                    req = auth_pb2.VerifyRequest(subject_id=att.claim, probe=probe)
                    sent.append((n, auth_pb2.AuthProbe(verify=req, sequence=n)))
            replies = {d.sequence: d for d in client.stream(p for _, p in sent)}
            client.close()
        finally:
            running.stop(0)
    rows = [_row(att, replies.get(n), threshold) for n, att in enumerate(attempts)]
    # Presentation attacks on an enrolled person's own photo: refused on the edge, unsent.
    victim = enrolled[1 % len(enrolled)]
    attacks = presentation_attacks(
        victim, load_image(people[victim][-1]), pipeline.detector, out / "liveness"
    )
    # The service names the operating point that decided; the policy's name if none replied.
    told = [d.verify.operating_point for d in replies.values() if d.HasField("verify")]
    operating_point = next(iter(told), "") or policy.operating_point(space_id)
    rates = {}
    for kind in ("genuine", "impostor"):
        mine = [r for r in rows if r["kind"] == kind]
        acc = sum(r["accepted"] for r in mine)
        rates[f"{kind}_accepts"], rates[f"{kind}_rejects"] = acc, len(mine) - acc
        rates[f"{kind}_accept_rate"] = round(acc / len(mine), 4) if mine else None
    summary = {
        "model": f"hpvfg/{pipeline.model.version}:{precision}",
        "space": space.upper(),
        "far": far_label(far),
        "operating_point": operating_point,
        "threshold": threshold,
        "enrolled": len(enrolled),
        "attempts": len(rows),
        **rates,
        "median_ms_per_frame": round(statistics.median(edge_ms), 1),
        "decisions": rows,
        "presentation_attacks": attacks,
        "presentation_attacks_refused": sum(not a["accepted"] for a in attacks),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _row(att: DemoAttempt, decision, threshold: float) -> dict:
    """One line of the decision table: what was decided, and why."""
    row = {
        "person": att.person,
        "claims": att.claim,
        "kind": att.kind,
        "frames": len(att.frames),
        "used": len(att.attempt.labels),
        "accepted": False,
    }
    if decision is None:
        row["reason"] = f"rejected: {att.attempt.poor_reason()}"
    elif decision.error_message:
        row["reason"] = f"error: {decision.error_message}"
        row["error"] = decision.error_message
    else:
        row["accepted"] = bool(decision.verify.match)
        score = decision.verify.score if decision.verify.HasField("score") else None
        if score is not None:
            row["score"] = round(score, 4)
        if row["accepted"]:
            row["reason"] = "accepted" if score is None else f"accepted: {score - threshold:+.3f}"
        elif score is None:
            row["reason"] = "rejected: below threshold"
        else:
            row["reason"] = f"rejected: below threshold by {threshold - score:.3f}"
    return row


def print_table(summary: dict) -> None:
    """Print one line per attempt, then the operating point and the accept rates."""
    w = sys.stdout.write
    w(f"{'person':<20} {'claims':<20} {'kind':<13} {'frames':>6}  decision\n")
    for d in summary["decisions"]:
        frames = f"{d['used']}/{d['frames']}"
        w(f"{d['person']:<20} {d['claims']:<20} {d['kind']:<13} {frames:>6}  {d['reason']}\n")
    for d in summary.get("presentation_attacks", []):
        frames = f"{d['used']}/{d['frames']}"
        w(f"{d['person']:<20} {d['claims']:<20} {d['kind']:<13} {frames:>6}  {d['reason']}\n")
    if summary.get("presentation_attacks"):
        w(f"{ATTACK_NOTE}\n")
    w(
        f"\noperating point: {summary['operating_point']} (threshold {summary['threshold']:.4f}, "
        f"calibrated on training identities)\n"
    )
    for kind in ("genuine", "impostor"):
        acc, rej = summary[f"{kind}_accepts"], summary[f"{kind}_rejects"]
        rate = summary[f"{kind}_accept_rate"]
        shown = f"{rate:.0%}" if rate is not None else "n/a"
        w(f"{kind} accepted: {acc} of {acc + rej} ({shown})\n")
    if summary.get("presentation_attacks"):
        n = len(summary["presentation_attacks"])
        w(f"presentation attacks refused: {summary['presentation_attacks_refused']} of {n}\n")
    w(f"median {summary['median_ms_per_frame']:.0f} ms per frame on the edge; {summary['model']}\n")


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole system on loopback on the bundled sample faces",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    p.add_argument("--space", choices=sorted(SPACES), default=DEFAULT_SPACE,
                   help=f"template space (default {DEFAULT_SPACE})")  # fmt: skip
    p.add_argument("--far", type=float, default=DEFAULT_FAR,
                   help="operating point: calibrated false-accept rate, 1e-3 or 1e-4")  # fmt: skip
    p.set_defaults(handler=_run)


def _run(args) -> int:
    summary = run_demo(args.out, args.precision, space=args.space, far=args.far)
    print_table(summary)
    sys.stdout.write(f"frames: {args.out / 'frames'}, summary: {args.out / 'summary.json'}\n")
    return 0
