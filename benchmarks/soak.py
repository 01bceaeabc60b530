"""Soak: 30 minutes of mixed load on two replicas over PostgreSQL, one killed every few minutes.

Runs tests/soak_kit.py (tests/test_soak.py runs it for one minute) and prints one table:
calls made, answers that contradicted an acknowledged write (must be 0), writes lost or
applied twice (must be 0), Identify answers that lagged inside the sync bound (allowed),
and the memory of the replica that is never killed, over time.

Run: python benchmarks/soak.py [--minutes 30] [--kill-every 180] [--replicas 2]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from soak_kit import run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--kill-every", type=float, default=180.0, help="seconds between kills")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--devices", type=int, default=3)
    args = p.parse_args()
    if args.minutes <= 0 or args.kill_every <= 0 or args.replicas < 1 or args.devices < 1:
        p.error("--minutes, --kill-every, --replicas and --devices must be positive")
    logging.basicConfig(level=logging.WARNING)
    tty = sys.stderr.isatty()

    def progress(t: float, report) -> None:
        if tty:
            sys.stderr.write(
                f"\r{t / 60:5.1f}/{args.minutes:.0f} min  writes {report.writes}  "
                f"reads {report.verifies + report.identifies}  kills {report.kills}  "
                f"wrong {len(report.wrong)}"
            )

    with tempfile.TemporaryDirectory() as tmp:
        r = run(Path(tmp), args.minutes * 60, args.replicas, args.kill_every, args.devices,
                progress=progress)  # fmt: skip
    if tty:
        sys.stderr.write("\n")
    w = sys.stdout.write
    w("| minutes | replicas | kills | writes | Verify | Identify | wrong answers | failed calls "
      "| lost | duplicated | lagging Identify (< 1 s) |\n")  # fmt: skip
    w("|---" * 11 + "|\n")
    w(f"| {args.minutes:g} | {r.replicas} | {r.kills} | {r.writes} | {r.verifies} | "
      f"{r.identifies} | {len(r.wrong)} | {r.failed_calls} | {r.lost} | {r.duplicated} | "
      f"{r.late} |\n")  # fmt: skip
    w("\n| minute | RSS of the replica never killed (MB) |\n|---|---|\n")
    for t, mb in r.rss_mb[:: max(1, len(r.rss_mb) // 10)]:
        w(f"| {t / 60:.1f} | {mb:.1f} |\n")
    w(f"\nRSS growth, first third to last third (medians): {r.rss_growth_mb:+.1f} MB\n")
    for line in r.wrong[:20]:
        w(f"- wrong: {line}\n")
    return 0 if r.clean else 1


if __name__ == "__main__":
    sys.exit(main())
