"""Exactly-once writes: kill -9 the real server at random points while writes flow.

Hundreds of Enroll, Rekey and Revoke writes from four devices go through their edge
outboxes to ``kfaar serve`` (SQLite), which is killed with SIGKILL at random moments and
restarted. Every write must then be applied exactly once and in order. The seed is
printed, so that a failure can be replayed with KFAAR_FAULT_SEED; benchmarks/exactly_once.py
runs a longer version.
"""

from __future__ import annotations

import os
from pathlib import Path

from fault_kit import run


def test_writes_survive_random_kills_exactly_once(tmp_path: Path, capsys) -> None:
    seed = os.environ.get("KFAAR_FAULT_SEED")
    report = run(tmp_path, writes=400, kills=8, seed=int(seed) if seed else None)
    with capsys.disabled():
        print(f"\nfault injection: {report}")
    assert report.kills == 8 and report.kills_with_backlog >= 1, report
    assert report.exactly_once, report
