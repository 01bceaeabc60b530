"""Deployment files: the systemd units parse, and every setting they name exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "deploy" / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_units_pass_systemd_analyze(tmp_path: Path) -> None:
    for unit in SYSTEMD.glob("*.service"):
        text = unit.read_text().replace("/opt/kfaar/venv/bin/kfaar", "/bin/true")
        name = unit.name.replace("@.service", "@test.service")
        (tmp_path / name).write_text(text)
        done = subprocess.run(
            ["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr


def test_every_setting_in_the_examples_is_read_by_the_code() -> None:
    code = "".join(p.read_text() for p in REPO.glob("*/**/*.py") if ".venv" not in p.parts)
    names = set()
    for example in SYSTEMD.glob("*.env.example"):
        names |= set(re.findall(r"^(KFAAR_[A-Z_]+)=", example.read_text(), re.M))
    assert len(names) > 10
    missing = {
        n for n in names if f'"{n}"' not in code and n not in {"KFAAR_SOURCE", "KFAAR_CLAIM"}
    }
    assert not missing, f"settings no code reads: {missing}"
