"""Exactly-once writes under fault injection, at length: many random SIGKILLs of the service.

Runs the fault-injection harness of tests/fault_kit.py (a real ``kfaar serve`` on SQLite,
devices writing through their outboxes, kills at random points) for several rounds, and
prints one table row per round: writes, kills, kills that found writes queued or in
flight, and the writes duplicated, lost, reordered or refused (all must be 0). With
``--baseline DIR`` the same rounds also run against the service of another checkout (for
example ``git archive <commit> | tar -x -C DIR``), measured in the same run.

Run: python benchmarks/exactly_once.py [--rounds 3] [--writes 1000] [--kills 20]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fault_kit import run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--writes", type=int, default=1000)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--seed", type=int, default=None, help="first round's seed (then +1 each)")
    p.add_argument("--baseline", default=None, help="checkout whose service to compare")
    args = p.parse_args()
    logging.disable(logging.ERROR)  # refusals of a broken baseline are counted, not logged
    services = [("this tree", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    print("| service | round | seed | writes | kills | kills with backlog | duplicated | lost "
          "| reordered subjects | refused | exactly once | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    failures = {name: 0 for name, _ in services}
    for i in range(args.rounds):
        seed = None if args.seed is None else args.seed + i
        for name, path in services:
            with tempfile.TemporaryDirectory() as tmp:
                r = run(Path(tmp), args.writes, args.kills, args.devices, seed=seed,
                        server_pythonpath=path)  # fmt: skip
            failures[name] += not r.exactly_once
            print(f"| {name} | {i + 1} | {r.seed} | {r.writes} | {r.kills} | "
                  f"{r.kills_with_backlog} | {r.duplicated} | {r.lost} | {len(r.reordered)} | "
                  f"{r.refused} | {'yes' if r.exactly_once else 'NO'} | {r.seconds:.0f} |",
                  flush=True)  # fmt: skip
    for name, n in failures.items():
        print(f"{name}: {n} of {args.rounds} rounds not exactly-once")
    return 1 if failures["this tree"] else 0


if __name__ == "__main__":
    sys.exit(main())
