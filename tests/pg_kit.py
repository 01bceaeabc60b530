"""A throwaway PostgreSQL server on a free loopback port, which tests may also restart."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def postgres_bin(name: str) -> str | None:
    """Find a PostgreSQL server binary on PATH or in Debian's versioned folder."""
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]
    return found if isinstance(found, str) else (found[0] if found else None)


class PostgresServer:
    """initdb, start, restart and remove one server; ``url`` names it without a database."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        # PostgreSQL refuses to run as root: there, run it as its own system user, in a
        # folder that user owns (pytest's tmp folders are private to root).
        self.root = Path(tempfile.mkdtemp(prefix="kfaar-pg-"))
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            self.run_as = ["runuser", "-u", "postgres", "--"]
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.data = self.root / "data"
        self._ctl_run(
            [self.initdb, "-D", str(self.data), "-A", "trust", "-U", "kfaar", "--no-sync"]
        )
        self.url = f"postgresql://kfaar@127.0.0.1:{self.port}"

    def _ctl_run(self, argv: list[str], check: bool = True) -> None:
        subprocess.run([*self.run_as, *argv], check=check, capture_output=True)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "log")
        self._ctl_run([self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", log, "-w", "start"])

    def stop(self, mode: str = "fast") -> None:
        self._ctl_run([self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"], check=False)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
