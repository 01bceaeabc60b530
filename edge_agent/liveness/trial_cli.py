"""``kfaar edge liveness-trial``: measure the door's challenge on site, with its camera.

A security officer runs it with the door's own settings (the same options and variables
as ``kfaar edge run``), has people follow the prompts N times, and gets the pass rate
with its interval, the failures by reason and a report; attack runs with the same tool,
merged with ``--summarize``, give APCER per attack type and BPCER (docs/LIVENESS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

WINDOW = "kfaar liveness trial"


def add_trial_parser(actions: argparse._SubParsersAction) -> None:
    """Add ``liveness-trial`` to ``kfaar edge``'s actions."""
    from edge_agent.door_cli import add_liveness_args

    t = actions.add_parser(
        "liveness-trial",
        help="measure the door's liveness challenge on site: N trials, pass rate, report",
        description="Run the door's liveness gate (random timed head turns, and passive PAD "
        "unless --liveness off) N times over a camera: each trial prompts 'face the camera', "
        "then the door's prompts at their random moments, until it passes, fails or runs out "
        "of time; a pause; the next. Prints one line per prompt (stderr, timestamped) and per "
        "trial, then the pass rate with its Wilson 95% interval, and writes trial.json and "
        "trial.md to --out. Keeps numbers only (times, five landmarks, parallax per frame); "
        "frames only with --save-frames. Ctrl-C (or q in the --show window) stops the run and "
        "still writes the report of the trials decided. --summarize merges runs into "
        "BPCER/APCER counts.",
    )
    t.add_argument("--source",
                   help="webcam index or RTSP URL (the door's camera), or a video file, "
                   "judged at its own recorded pace (a recording cannot follow the prompts: "
                   "that is a replay)")  # fmt: skip
    t.add_argument("--trials", type=int, default=20, metavar="N", help="trials to run (20)")
    t.add_argument("--pause", type=float, default=3.0, metavar="S",
                   help="seconds between trials, after 'face the camera' (3)")  # fmt: skip
    t.add_argument("--out", type=Path, metavar="DIR", help="folder for trial.json and trial.md")
    t.add_argument("--presentation", default="live", metavar="LABEL",
                   help="what stands at the camera, recorded in the report: 'live' (bona "
                   "fide, the default) or an attack type: print, screen, replay")  # fmt: skip
    t.add_argument("--person", default=None, metavar="LABEL",
                   help="pseudonymous label of the person (e.g. p07; never a name), so merged "
                   "runs can count people")  # fmt: skip
    t.add_argument("--show", action="store_true",
                   help="show the camera in a window with the prompt drawn on it (needs a "
                   "display and OpenCV with a GUI; default: prompts on stderr only)")  # fmt: skip
    t.add_argument("--save-frames", type=Path, default=None, metavar="DIR",
                   help="also write every frame of every trial here as JPEG: images of people, "
                   "off by default (the report holds numbers only)")  # fmt: skip
    t.add_argument("--summarize", nargs="+", type=Path, default=None, metavar="DIR",
                   help="instead of running trials: merge these runs' trial.json (folders or "
                   "files) into one table per presentation type (BPCER for live, APCER per "
                   "attack type); with --out, also writes summary.json and summary.md")  # fmt: skip
    add_liveness_args(t, challenge_default="on", steps_alias=True)
    t.set_defaults(handler=_trial)


def _public(source: str) -> str:
    """The source as the report names it: a URL's user and password are left out."""
    if "://" not in source:
        return source
    parts = urlsplit(source)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _window():
    """Return a callback that shows a frame with the prompt on it, or raise if none can."""
    import cv2

    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error as exc:
        raise ValueError("--show needs a display and OpenCV built with a GUI, which this one "
                         "is not; without --show the prompts go to stderr") from exc  # fmt: skip

    def show(frame, text: str) -> None:
        if text:
            frame = frame.copy()
            scale = max(0.6, frame.shape[1] / 900)
            cv2.putText(frame, text, (12, int(36 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                        (0, 255, 255), max(1, round(2 * scale)), cv2.LINE_AA)  # fmt: skip
        cv2.imshow(WINDOW, frame)
        if cv2.waitKey(1) & 0xFF == ord("q"):
            raise KeyboardInterrupt  # the operator stops the run: the report is still written

    return show


def _line(text: str, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()  # a person waits on each line


def _summarize(args: argparse.Namespace) -> int:
    import json

    from edge_agent.liveness.trial_report import merge, merge_table

    merged = merge(args.summarize)
    table = merge_table(merged)
    sys.stdout.write(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(json.dumps(merged, indent=1) + "\n")
        (args.out / "summary.md").write_text("# Liveness trials merged\n\n" + table)
    return 0


def _trial(args: argparse.Namespace) -> int:
    from edge_agent.capture import timed_frames
    from edge_agent.door_cli import liveness_gate
    from edge_agent.liveness.trial import TrialRunner, check_settings
    from edge_agent.liveness.trial_report import check_label, summary_table, write_report

    if args.summarize:
        return _summarize(args)
    if not args.source or not args.out:
        raise ValueError("--source and --out are required (or --summarize DIR...)")
    check_settings(args.trials, args.pause)
    check_label(args.presentation, "--presentation")
    if args.person is not None:
        check_label(args.person, "--person")
    show = _window() if args.show else None
    gate = liveness_gate(args, log.info)  # the runner gives the gate its own voice

    def progress(rec: dict) -> None:
        done = runner.run_state.trials
        passed = sum(t["outcome"] == "pass" for t in done)
        how = (f"pass in {rec['duration_s']:.1f} s" if rec["outcome"] == "pass"
               else f"FAIL after {rec['duration_s']:.1f} s: {rec['reason']}")  # fmt: skip
        _line(f"trial {rec['index']}/{args.trials}: {how}  [{passed}/{len(done)} passed]")

    runner = TrialRunner(gate, args.trials, args.pause,
                         say=lambda text: _line(text, sys.stderr), progress=progress,
                         show=show, save_frames=args.save_frames)  # fmt: skip
    started = datetime.now(UTC).isoformat(timespec="seconds")
    interrupted, source = False, timed_frames(args.source)
    try:
        run = runner.run(source)
    except KeyboardInterrupt:
        run, interrupted = runner.run_state, True
        run.ended = f"stopped by the operator after {len(run.trials)} of {args.trials} trials"
    finally:
        source.close()
    if not run.trials:
        raise ValueError(f"no trial was decided ({run.ended}): is a face in view?")
    cfg = runner.gate.challenge
    settings = {
        "actions": list(runner.gate.actions),
        "steps": cfg.steps,
        "step_time_s": cfg.step_time_s,
        "time_limit_s": cfg.time_limit_s,
        "challenge": dataclasses.asdict(cfg),
        "liveness": args.liveness,
        "passive_threshold": runner.gate.passive.threshold if runner.gate.passive else None,
        "pause_s": args.pause,
    }
    meta = {
        "tool": "kfaar edge liveness-trial",
        "presentation": args.presentation,
        "person": args.person,
        "source": _public(args.source),
        "started_utc": started,
        "ended": run.ended,
        "incomplete": run.incomplete,
        "trials_asked": args.trials,
        "frames_saved": args.save_frames is not None,
        "settings": settings,
    }
    report = write_report(args.out, meta, run.trials)
    _line(f"\n{args.presentation}: {run.ended}")
    sys.stdout.write(summary_table(report["summary"]))
    _line(f"report: {args.out / 'trial.md'}, {args.out / 'trial.json'}")
    return 130 if interrupted else 0
