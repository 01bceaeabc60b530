"""``kfaar edge run``'s door options: liveness checks and the actions a decision drives."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from edge_agent.door import DoorActions, DoorConfig
from edge_agent.keys_cli import default_keystore
from edge_agent.liveness.challenge import ACTIONS, DEFAULT_ACTIONS, ChallengeConfig
from edge_agent.liveness.gate import LivenessGate

log = logging.getLogger(__name__)

LIVENESS_MODES = ("passive", "passive-int8", "off")


def add_liveness_args(
    r: argparse.ArgumentParser, challenge_default: str = "off", steps_alias: bool = False
) -> None:
    """Add the door's liveness options (``kfaar edge run``, ``kfaar edge liveness-trial``).

    ``challenge_default`` applies where ``$KFAAR_CHALLENGE`` is unset; ``steps_alias`` also
    accepts ``--steps`` for ``--challenge-steps``.
    """
    env = os.environ.get
    r.add_argument(
        "--liveness",
        choices=LIVENESS_MODES,
        default=env("KFAAR_LIVENESS", "passive"),
        help="passive presentation-attack detection on every frame (MiniFASNet; "
        "default passive, $KFAAR_LIVENESS)",
    )
    r.add_argument(
        "--challenge",
        default=env("KFAAR_CHALLENGE", challenge_default),
        help="active challenge, a random sequence of timed head turns per attempt: 'off', "
        f"'on' or 'all' ({' and '.join(DEFAULT_ACTIONS)}), or a comma list of "
        f"{', '.join(ACTIONS)} (default {challenge_default}; $KFAAR_CHALLENGE)",
    )
    r.add_argument(
        "--challenge-steps",
        *(("--steps",) if steps_alias else ()),
        dest="challenge_steps",
        type=int,
        default=env("KFAAR_CHALLENGE_STEPS", "3"),  # a string default goes through type
        help="prompts in one challenge (3; a replay ignoring them passes with a chance of "
        "about 0.16 per step) ($KFAAR_CHALLENGE_STEPS)",
    )
    r.add_argument("--challenge-time", type=float, default=8.0,
                   help="seconds allowed per step (8)")  # fmt: skip


def add_door_args(r: argparse.ArgumentParser) -> None:
    """Add the liveness and door-action options to ``kfaar edge run``."""
    env = os.environ.get
    secret_file = env("KFAAR_DOOR_SECRET_FILE")
    add_liveness_args(r)
    r.add_argument(
        "--on-accept",
        default=env("KFAAR_ON_ACCEPT"),
        metavar="COMMAND",
        help="run on an accepted attempt, decision as JSON on stdin; split into arguments "
        "like a shell would, but never run by one ($KFAAR_ON_ACCEPT)",
    )
    r.add_argument("--on-reject", default=env("KFAAR_ON_REJECT"), metavar="COMMAND",
                   help="run on a rejected attempt, likewise ($KFAAR_ON_REJECT)")  # fmt: skip
    r.add_argument(
        "--webhook",
        default=env("KFAAR_DOOR_WEBHOOK"),
        metavar="URL",
        help="POST each decision here, HMAC-SHA256 signed, at most once per attempt "
        "($KFAAR_DOOR_WEBHOOK)",
    )
    r.add_argument(
        "--webhook-secret-file",
        type=Path,
        default=Path(secret_file) if secret_file else None,
        help="file holding the webhook's HMAC secret ($KFAAR_DOOR_SECRET_FILE)",
    )
    r.add_argument(
        "--door-journal",
        type=Path,
        default=None,
        help="SQLite journal of fired actions (default: door.db beside the keystore)",
    )


def _actions(spec: str) -> tuple[str, ...]:
    if spec == "off":
        return ()
    if spec == "on":
        return DEFAULT_ACTIONS
    if spec == "all":
        return ACTIONS
    chosen = tuple(a.strip() for a in spec.split(",") if a.strip())
    bad = [a for a in chosen if a not in ACTIONS]
    if bad or not chosen:
        raise ValueError(
            f"--challenge: unknown actions {bad}; use off, on, all or {', '.join(ACTIONS)}"
        )
    return chosen


def _argv(command: str | None, flag: str) -> tuple[str, ...]:
    if not command:
        return ()
    argv = tuple(shlex.split(command))
    if not argv:
        raise ValueError(f"{flag} is empty")
    return argv


def liveness_gate(args: argparse.Namespace, prompt: Callable[[str], object]) -> LivenessGate:
    """Build the liveness gate that ``args`` (from :func:`add_liveness_args`) ask for."""
    if args.challenge_time <= 0:
        raise ValueError("--challenge-time must be positive")
    if not 1 <= args.challenge_steps <= 8:
        raise ValueError("--challenge-steps must be between 1 and 8")
    actions = _actions(args.challenge)  # checked before the model loads
    passive = None
    if args.liveness != "off":
        from edge_agent.liveness.pad import PassiveLiveness

        passive = PassiveLiveness("int8" if args.liveness == "passive-int8" else "fp32")
    cfg = ChallengeConfig(steps=args.challenge_steps, step_time_s=args.challenge_time)
    return LivenessGate(passive, actions, cfg, prompt)


def door_setup(args: argparse.Namespace) -> tuple[LivenessGate, DoorActions | None]:
    """Build the liveness gate and the door actions that ``args`` ask for."""
    prompt = lambda text: sys.stdout.write(f"challenge: {text}\n")  # noqa: E731
    gate = liveness_gate(args, prompt)
    secret = b""
    if args.webhook:
        if args.webhook_secret_file is None:
            raise ValueError("--webhook needs --webhook-secret-file (or $KFAAR_DOOR_SECRET_FILE)")
        secret = args.webhook_secret_file.read_bytes().strip()
        if len(secret) < 16:
            raise ValueError("the webhook secret must be at least 16 bytes")
    cfg = DoorConfig(
        on_accept=_argv(args.on_accept, "--on-accept"),
        on_reject=_argv(args.on_reject, "--on-reject"),
        webhook_url=args.webhook,
        webhook_secret=secret,
        journal=args.door_journal or default_keystore().with_name("door.db"),
    )
    if not (cfg.on_accept or cfg.on_reject or cfg.webhook_url):
        return gate, None
    door = DoorActions(cfg)
    resumed = door.resume()  # webhooks a previous run could not deliver, if still fresh
    if resumed:
        log.info("delivered %d door webhooks left pending by the previous run", resumed)
    return gate, door
