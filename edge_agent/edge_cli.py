"""``kfaar edge``: enroll, authenticate live, and recover identities with the key (KVFA).

Originals stay in memory: only virtual frames are written, and only with --save-frames,
unless --save-originals is given explicitly.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from edge_agent.cli_client import cli_client as _client
from edge_agent.cli_client import cli_keystore as _keystore
from edge_agent.keys_cli import DEVICE_SECRET_ENV, KEYSTORE_ENV

log = logging.getLogger(__name__)


def _env_path(name: str) -> Path | None:
    return Path(os.environ[name]) if os.environ.get(name) else None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "edge",
        help="the edge agent",  # the list of actions is filled in by _list_actions
        description="Detect, anonymize under the subject's key and send only keyed templates "
        "(never a face, its embedding or the key), signed by this device, to the "
        "authentication service.",
    )
    p.add_argument("--server", default=os.environ.get("KFAAR_SERVER", "127.0.0.1:50051"),
                   help="service host:port, a list host1:port,host2:port or "
                   "dns:///name:port, spread round-robin over the replicas that report "
                   "SERVING ($KFAAR_SERVER)")  # fmt: skip
    p.add_argument("--device-id", default=os.environ.get("KFAAR_DEVICE_ID", socket.gethostname()),
                   help="this device's registered id ($KFAAR_DEVICE_ID)")  # fmt: skip
    p.add_argument("--ca", type=Path, default=_env_path("KFAAR_TLS_CA"),
                   help="the service's CA; without it, plaintext ($KFAAR_TLS_CA)")  # fmt: skip
    p.add_argument("--cert", type=Path, default=_env_path("KFAAR_TLS_CLIENT_CERT"),
                   help="client certificate for mTLS ($KFAAR_TLS_CLIENT_CERT)")  # fmt: skip
    p.add_argument("--key", type=Path, default=_env_path("KFAAR_TLS_CLIENT_KEY"),
                   help="client private key for mTLS ($KFAAR_TLS_CLIENT_KEY)")  # fmt: skip
    p.add_argument("--outbox", type=Path, default=_env_path("KFAAR_OUTBOX"),
                   help="durable queue that sends writes in order, exactly once "
                   "($KFAAR_OUTBOX; default: next to the keystore)")  # fmt: skip
    p.add_argument("--keystore", type=Path, default=None, help=f"default: ${KEYSTORE_ENV}")
    p.add_argument("--device-secret", type=Path, default=None, help=f"or ${DEVICE_SECRET_ENV}")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    p.add_argument("--space", choices=("keyed", "virtual"),
                   default=os.environ.get("KFAAR_SPACE", "keyed"),
                   help="template space: keyed z'=P(z,k) (default, see docs/MODEL_CARD.md) or "
                   "virtual R(G(x,k)); enroll and run must agree ($KFAAR_SPACE)")  # fmt: skip
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    e = actions.add_parser("enroll", help="enroll a subject from a few frames of a source")
    e.add_argument("--subject", required=True, help="pseudonymous subject id")
    e.add_argument("--source", required=True, help="webcam index, video, RTSP URL or folder")
    e.add_argument("--frames", type=int, default=3, help="frames with a face to enroll (3)")
    e.add_argument("--site", default=None,
                   help="enroll under this site key (for 1:N identify)")  # fmt: skip
    e.set_defaults(handler=_enroll)

    k = actions.add_parser(
        "rekey",
        help="rotate a subject's key and replace their templates on the service",
        description="Capture the subject again (a virtual face needs the face), rotate their "
        "key, and send templates made under the new key with Rekey. The old key stays in "
        "the keystore as the previous key. Also the way to move a subject to a new model.",
    )
    k.add_argument("--subject", required=True, help="the subject whose key is rotated")
    k.add_argument("--source", required=True, help="webcam index, video, RTSP URL or folder")
    k.add_argument("--frames", type=int, default=3, help="frames with a face to enroll (3)")
    k.set_defaults(handler=_rekey)

    r = actions.add_parser("run", help="authenticate the faces of a source against a claim")
    r.add_argument("--source", required=True, help="webcam index, video, RTSP URL or folder")
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--claim", help="verify (1:1): the subject id the person claims to be")
    who.add_argument("--site", help="identify (1:N) among subjects enrolled under this site key")
    r.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    r.add_argument("--attempt-timeout", type=float, default=2.0,
                   help="decide this many seconds after an attempt's first frame")  # fmt: skip
    r.add_argument("--attempt-frames", type=float, default=3.0,
                   help="decide early once the frames weigh this many good ones")  # fmt: skip
    r.add_argument("--save-frames", type=Path, default=None, help="write virtual frames here")
    r.add_argument("--save-originals", action="store_true",
                   help="also write the original frames (off by default)")  # fmt: skip
    from edge_agent.door_cli import add_door_args

    add_door_args(r)
    r.set_defaults(handler=_run)

    v = actions.add_parser("verify-original", help="KVFA on the edge: is this virtual face X?")
    v.add_argument("--subject", required=True, help="whose key made the virtual faces")
    v.add_argument("--reference", type=Path, required=True, help="a photo of the person")
    v.add_argument("--source", required=True, help="virtual faces: image, folder or video")
    v.set_defaults(handler=_verify_original)

    # Signed model updates (issue 5): the parser and handler live in edge_agent/model_registry.
    from edge_agent.model_registry import add_update_parser

    add_update_parser(actions)
    from edge_agent.outbox_cli import add_flush_parser

    add_flush_parser(actions)
    from edge_agent.liveness.trial_cli import add_trial_parser

    add_trial_parser(actions)  # measures the door's challenge on site (docs/LIVENESS.md)
    _list_actions(sub, "edge", "the edge agent", actions)


def _list_actions(sub: argparse._SubParsersAction, name: str, what: str, actions) -> None:
    """Make ``kfaar --help``'s line for ``name`` list every action, however many are added."""
    for line in sub._choices_actions:  # argparse keeps each subcommand's help line here
        if line.dest == name:
            line.help = f"{what}: {', '.join(actions.choices)}"


def _pipeline(args: argparse.Namespace):
    from edge_agent.hpvfg import Bundle, HpvfgAnonymizer
    from edge_agent.model_registry import installed_bundle
    from edge_agent.pipeline import EdgePipeline

    # The version kfaar edge update verified and installed, else the packaged one.
    bundle = Bundle.load(installed_bundle())
    log.info("model hpvfg/%s from %s", bundle.version, bundle.path)
    return EdgePipeline(HpvfgAnonymizer(bundle, precision=args.precision), space=args.space)


def _write(client, method: str, req, prefix: str) -> int:
    """Send an enrollment-type write (or queue it while the service is down); report it."""
    reply = client.send_or_queue(method, req)
    state = f"{reply.templates_stored} templates stored" if reply else "queued in the outbox"
    sys.stdout.write(f"{prefix}{state}\n")
    return 0


def _faces(source: str, pipeline, key: bytes, limit: int | None):
    """Yield (label, original, virtual face) for frames with a face, up to ``limit``."""
    from edge_agent.capture import frames
    from edge_agent.face.detect import NoFaceError

    n = 0
    for label, frame in frames(source):
        if limit is not None and n >= limit:
            return
        try:
            vf = pipeline.virtual(frame, key)
        except NoFaceError:
            log.info("%s: no face", label)
            continue
        n += 1
        yield label, frame, vf


def _enroll(args: argparse.Namespace) -> int:
    from kfaar_pb.v1 import auth_pb2

    if args.frames < 1:
        raise ValueError("--frames must be at least 1")
    keys = _keystore(args)
    name, kind = (args.site, "site") if args.site else (args.subject, "subject")
    key = keys.key(name) if name in {e.name for e in keys.entries()} else keys.add(name, kind)
    pipeline = _pipeline(args)
    faces = _faces(args.source, pipeline, key, args.frames)
    templates = [pipeline.message(vf.embedding) for _, _, vf in faces]
    if not templates:
        raise ValueError(f"no face found in {args.source}")
    req = auth_pb2.EnrollRequest(subject_id=args.subject, templates=templates)
    return _write(_client(args, keys), "Enroll", req, f"{args.subject}: ")


def _rekey(args: argparse.Namespace) -> int:
    from edge_agent.capture import frames
    from edge_agent.face.detect import NoFaceError
    from kfaar_pb.v1 import auth_pb2

    if args.frames < 1:
        raise ValueError("--frames must be at least 1")
    keys = _keystore(args)
    if next((e.kind for e in keys.entries() if e.name == args.subject), None) != "subject":
        raise LookupError(f"no subject key named {args.subject!r} in the keystore")
    pipeline = _pipeline(args)
    # Find the faces before rotating: a run that sees nobody must leave the key as it was.
    shots = []
    for label, frame in frames(args.source):
        try:
            shots.append((frame, pipeline.detector.primary(frame)))
        except NoFaceError:
            log.info("%s: no face", label)
        if len(shots) == args.frames:
            break
    if not shots:
        raise ValueError(f"no face found in {args.source}")
    client = _client(args, keys)
    key = keys.rotate(args.subject)
    templates = [pipeline.message(pipeline.embed(frame, face, key)) for frame, face in shots]
    req = auth_pb2.RekeyRequest(subject_id=args.subject, templates=templates)
    return _write(client, "Rekey", req, f"{args.subject}: key rotated, ")


def _run(args: argparse.Namespace) -> int:
    from edge_agent.attempts import AttemptConfig, AttemptTracker
    from edge_agent.door_cli import door_setup
    from edge_agent.live import Decision, run_attempts
    from kfaar_pb.v1 import auth_pb2

    if args.attempt_timeout <= 0 or args.attempt_frames <= 0:
        raise ValueError("--attempt-timeout and --attempt-frames must be positive")
    keys = _keystore(args)
    key = keys.key(args.claim or args.site)
    pipeline, client = _pipeline(args), _client(args, keys)
    if args.save_frames:
        args.save_frames.mkdir(parents=True, exist_ok=True)

    def decide(template, views: int, liveness=None) -> Decision:
        """One signed request for one attempt's fused probe (and its liveness evidence)."""
        probe = pipeline.message(template, views)
        if args.claim:
            req = auth_pb2.VerifyRequest(subject_id=args.claim, probe=probe, liveness=liveness)
            reply = client.call("Verify", req)  # sets the request's idempotency key
            text = "ACCEPT" if reply.match else "reject"
            return Decision(reply.match, text, reply.operating_point, req.idempotency_key,
                            reply.access_grant)  # fmt: skip
        req = auth_pb2.IdentifyRequest(probe=probe, top_k=1, liveness=liveness)
        found = client.call("Identify", req)
        who = found.candidates[0].subject_id if found.candidates else "unknown"
        return Decision(bool(found.candidates), who, found.operating_point,
                        req.idempotency_key, found.access_grant)  # fmt: skip

    gate, door = door_setup(args)
    timeout = args.attempt_timeout
    if gate.actions:  # the attempt lasts as long as the person may take for the action
        timeout = max(timeout, gate.challenge.time_limit_s)
    cfg = AttemptConfig(enough_weight=args.attempt_frames, timeout_s=timeout)
    tracker = AttemptTracker(cfg, liveness=gate.new_attempt if gate.enabled else None)
    context = {"device": args.device_id, "claim" if args.claim else "site": args.claim or args.site}
    tally = run_attempts(
        args.source,
        pipeline,
        key,
        decide,
        sys.stdout.write,
        tracker,
        max_frames=args.max_frames,
        save_frames=args.save_frames,
        save_originals=args.save_originals,
        door=door,
        context=context,
    )
    sys.stdout.write(tally.summary())
    return 0


def _verify_original(args: argparse.Namespace) -> int:
    from edge_agent.capture import frames
    from edge_agent.face.image_io import load_image
    from edge_agent.progress import plural

    keys = _keystore(args)
    key, pipeline = keys.key(args.subject), _pipeline(args)
    anon = pipeline.anonymizer
    ref = load_image(args.reference)
    reference = anon.recognizer.embed(ref, pipeline.detector.primary(ref).landmarks)
    found = 0
    for label, frame in frames(args.source):
        for face in pipeline.detector.detect(frame):
            score = float(anon.recover(frame, face, key) @ reference)
            match = score >= anon.threshold
            found += match
            sys.stdout.write(f"{label}\t{'MATCH' if match else 'no match'}\t{score:.4f}\n")
    matches = plural(found, "match", "matches")
    sys.stdout.write(f"{matches} at KVFA threshold {anon.threshold:.4f}\n")
    return 0
