"""``kfaar edge run``: one signed decision per attempt, over the frames of one tracked face."""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge_agent.attempts import Attempt, AttemptTracker, QualityConfig, frame_quality
from edge_agent.capture import frames
from edge_agent.door import DoorActions
from edge_agent.face.detect import NoFaceError
from edge_agent.pipeline import EdgePipeline

log = logging.getLogger(__name__)


@dataclass
class Decision:
    accepted: bool
    text: str  # what to print: "ACCEPT", "reject", a subject id, "unknown"
    operating_point: str = ""
    attempt_id: str = ""  # the request's idempotency key, which the grant names
    grant: bytes = b""  # the service's signed access grant, passed on to the door as is


@dataclass
class RunTally:
    attempts: int = 0
    accepted: int = 0
    rejected: int = 0
    too_poor: int = 0
    not_live: int = 0  # rejected on the edge by the liveness gate (also in ``rejected``)
    frames: int = 0
    dropped: int = 0
    operating_point: str = ""

    def summary(self) -> str:
        point = f"; operating point {self.operating_point}" if self.operating_point else ""
        live = f" ({self.not_live} not live)" if self.not_live else ""
        return (
            f"{self.attempts} attempts: {self.accepted} accepted, {self.rejected} rejected{live}, "
            f"{self.too_poor} face too poor ({self.frames} frames read, {self.dropped} dropped)"
            f"{point}\n"
        )


def describe(att: Attempt) -> str:
    """Name an attempt's frames: first..last, how many used and dropped, why it closed."""
    names = att.labels or [label for label, _ in att.dropped]
    span = names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"
    return f"{span} ({len(att.labels)} used, {len(att.dropped)} dropped; {att.closed_by})"


def run_attempts(
    source: str,
    pipeline: EdgePipeline,
    key: bytes,
    decide: Callable[[np.ndarray, int, object], Decision],
    write: Callable[[str], object],
    tracker: AttemptTracker | None = None,
    quality: QualityConfig | None = None,
    max_frames: int | None = None,
    save_frames: Path | None = None,
    save_originals: bool = False,
    door: DoorActions | None = None,
    context: dict | None = None,
) -> RunTally:
    """Read ``source``, fuse each tracked face's frames, and ``decide`` once per attempt.

    ``decide`` gets the fused template, how many views it fuses and the attempt's
    liveness evidence (None unless ``tracker`` checks liveness). An attempt that fails
    liveness is rejected here and sends nothing. ``door`` fires once per decision, with
    ``context`` (claim or site, device) in its JSON, and the service's access grant
    (base64, member "grant") when the service accepted and signed one.
    """
    tracker = tracker or AttemptTracker()
    tally = RunTally()

    def act(att: Attempt, accepted: bool, text: str, reason: str, evidence=None,
            decided: Decision | None = None) -> None:  # fmt: skip
        if door is None:
            return
        decision = {
            **(context or {}),
            # The request's idempotency key where there was a request: the grant names it.
            "attempt_id": (decided and decided.attempt_id) or secrets.token_hex(16),
            "accepted": accepted,
            "decision": text,
            "reason": reason,
            "frames": describe(att),
            "time": time.time(),
        }
        if evidence is not None:
            decision["liveness"] = {"method": evidence.method, "passed": evidence.passed,
                                    "score": round(evidence.score, 4),
                                    "challenge": evidence.challenge}  # fmt: skip
        if decided is not None and decided.grant:
            decision["grant"] = base64.b64encode(decided.grant).decode()
        door.fire(decision)

    def report(closed: list[Attempt]) -> None:
        for att in closed:
            tally.attempts += 1
            if not att.usable:
                tally.too_poor += 1
                write(f"{describe(att)}\trejected: {att.poor_reason()}\n")
                continue
            evidence = None
            if att.liveness is not None:
                live, why, evidence = att.liveness.verdict()
                if not live:
                    tally.rejected += 1
                    tally.not_live += 1
                    write(f"{describe(att)}\trejected: {why}\n")
                    act(att, False, "reject", why, evidence)
                    continue
            d = decide(*att.fused(), evidence)
            tally.accepted += d.accepted
            tally.rejected += not d.accepted
            tally.operating_point = d.operating_point or tally.operating_point
            write(f"{describe(att)}\t{d.text}\n")
            act(att, d.accepted, d.text, d.operating_point, evidence, d)

    for i, (label, frame) in enumerate(frames(source)):
        if max_frames is not None and i >= max_frames:
            break
        tally.frames += 1
        try:
            face = pipeline.detector.primary(frame)
        except NoFaceError:
            log.info("%s: no face", label)
            report(tracker.no_face())
            continue
        q = frame_quality(frame, face, quality)
        template = None
        if q.reason is not None:
            tally.dropped += 1
            write(f"{label}\tdropped: {q.reason}\n")
        elif save_frames is not None:
            vf = pipeline.render(frame, face, key)
            template = vf.embedding
            cv2.imwrite(str(save_frames / f"{i:05d}_virtual.jpg"), vf.image)
            if save_originals:
                cv2.imwrite(str(save_frames / f"{i:05d}_original.jpg"), frame)
        else:
            template = pipeline.embed(frame, face, key)
        report(tracker.add(label, face, q, template, frame))
    report(tracker.flush())
    return tally
