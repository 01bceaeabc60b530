"""One minute of mixed load on two replicas over PostgreSQL, one replica killed twice.

The half-hour version is benchmarks/soak.py; both run tests/soak_kit.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pg_kit import postgres_bin


def test_two_replicas_under_mixed_load_with_kills_give_no_wrong_answer(tmp_path: Path) -> None:
    if not (postgres_bin("initdb") and postgres_bin("pg_ctl")):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    from soak_kit import run

    report = run(tmp_path, seconds=60, replicas=2, kill_every_s=20)
    assert report.kills == 2 and report.writes > 100 and report.verifies + report.identifies > 200
    assert report.wrong == [] and report.failed_calls == 0
    assert report.lost == report.duplicated == 0
    # A leak of a megabyte a second would show; the steady replica's heap is warm by then.
    assert report.rss_growth_mb < 30, report.rss_mb
