"""``kfaar fl local``: a real Flower federation on loopback, from partition to new model.

One ``flower-superlink`` and N ``flower-supernode`` processes (each with its own site
folder) are started in their own process groups, ``flwr run`` submits the app, and every
group is terminated in ``finally``, on error, Ctrl+C or SIGTERM alike. ``FLWR_HOME`` lives
inside the output folder, so nothing touches ``~/.flwr``.

With ``tls=True`` the SuperLink serves every API over TLS with a development CA from
``OUT/tls`` and ``--enable-supernode-auth``; each site's OpenSSH EC public key is
registered with ``flwr supernode register`` before its SuperNode starts with
``--root-certificates`` and ``--auth-supernode-private-key``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from training.federated.tls import TlsMaterial, make_tls_material

log = logging.getLogger(__name__)

APP_DIR = Path(__file__).resolve().parent
CONNECTION = "kfaar-local"


@dataclass
class LocalConfig:
    out: Path
    sites: int = 2
    rounds: int = 2
    scheme: str = "iid"
    seed: int = 2025  # the partition's
    data_root: Path | None = None
    max_identities: int | None = None
    max_images: int | None = None
    dev_faces: int = 120
    version: str | None = None  # default: the base version with the minor bumped
    export: bool = True
    calib_faces: int = 128
    timeout_s: float = 3600.0
    tls: bool = False  # dev CA + TLS + SuperNode authentication on loopback
    run_config: dict = field(default_factory=dict)  # overrides of [tool.flwr.app.config]


def free_port() -> int:
    """Return a loopback port that was free a moment ago (bind to port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    path = Path(sys.executable).parent / name  # the venv's console scripts first
    return str(path) if path.is_file() else name


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a TOML basic string


def write_flwr_home(home: Path, port: int, root_certificates: Path | None = None) -> None:
    """Write ``config.toml`` with one loopback connection, the default (TLS given a CA)."""
    home.mkdir(parents=True, exist_ok=True)
    trust = "insecure = true\n"
    if root_certificates is not None:
        trust = f"root-certificates = {json.dumps(str(root_certificates.resolve()))}\n"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\n{trust}'
    )


def superlink_cmd(port: int, tls: TlsMaterial | None = None) -> list[str]:
    """Return the SuperLink command: insecure, or TLS with SuperNode authentication."""
    cmd = [_bin("flower-superlink"), "--disable-runtime-dependency-installation"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    if tls is None:
        return [*cmd, "--insecure"]
    cmd += ["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.server_cert)]
    return [*cmd, "--ssl-keyfile", str(tls.server_key), "--enable-supernode-auth"]


def supernode_cmd(
    link_port: int, site: Path, tls: TlsMaterial | None = None, key: Path | None = None
) -> list[str]:
    """Return a SuperNode command for ``site``: insecure, or TLS authenticated by ``key``."""
    node_config = f"data-path={json.dumps(str(site.resolve()))}"
    cmd = [_bin("flower-supernode"), "--superlink", f"127.0.0.1:{link_port}"]
    cmd += ["--port", str(free_port()), "--node-config", node_config]
    if tls is None:
        return [*cmd, "--insecure"]
    if key is None:
        raise ValueError("a SuperNode with TLS needs its authentication key")
    return [*cmd, "--root-certificates", str(tls.ca), "--auth-supernode-private-key", str(key)]


def register_nodes(keys: list[Path], env: dict[str, str], logs: Path) -> None:
    """Register each site's public key (``<key>.pub``) with the SuperLink via the Flower CLI."""
    for i, key in enumerate(keys):
        cmd = [_bin("flwr"), "supernode", "register", f"{key}.pub", CONNECTION]
        cmd += ["--name", f"site-{i}"]
        with open(logs / "register.log", "ab") as f:
            done = subprocess.run(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=120, check=False
            )
        if done.returncode != 0:
            raise RuntimeError(
                f"flwr supernode register {key}.pub exited with code {done.returncode}; "
                f"see {logs / 'register.log'}"
            )


class Processes:
    """Start commands in new sessions; stop every process group they made."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env, self.procs = logs, env, []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as f:
            proc = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        self.procs.append((name, proc))
        log.info("started %s (pid %d): %s", name, proc.pid, " ".join(cmd))
        return proc

    def pgids(self) -> list[int]:
        return [p.pid for _, p in self.procs]  # each is its own session and group leader

    def stop(self, grace_s: float = 10.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for _, p in reversed(self.procs):
                with suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
            deadline = time.monotonic() + grace_s
            for _, p in self.procs:
                with suppress(subprocess.TimeoutExpired):
                    p.wait(max(0.1, deadline - time.monotonic()))
            if all(not group_alive(g) for g in self.pgids()):
                return


def group_alive(pgid: int) -> bool:
    """Return whether any process of group ``pgid`` is still running (zombies excluded)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@contextmanager
def _sigterm_as_interrupt():
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_port(port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"flower-superlink did not listen on port {port} in {timeout_s:.0f} s")


def run_federation(
    out: Path,
    site_paths: list[Path],
    run_config: dict,
    timeout_s: float = 3600.0,
    tls: bool = False,
) -> Path:
    """Run the app on loopback with one SuperNode per site; return the server's out-dir."""
    home, logs = out / "flwr-home", out / "logs"
    port = free_port()
    material = make_tls_material(out / "tls", len(site_paths)) if tls else None
    write_flwr_home(home, port, material.ca if material else None)
    env = dict(os.environ, FLWR_HOME=str(home), PYTHONUNBUFFERED="1")
    # Flower's processes start others (flower-superexec) by name: find them beside ours,
    # also when this venv is not activated (make test runs .venv/bin/pytest directly).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # One thread per process: sites and server share the machine's cores.
    env.setdefault("OMP_NUM_THREADS", "1")
    cfg = dict(run_config)
    cfg.setdefault("out-dir", str(out / "server"))
    cfg.setdefault("min-nodes", len(site_paths))
    (out / "run_config.toml").write_text(
        "".join(f"{k} = {_toml_value(v)}\n" for k, v in cfg.items())
    )
    procs = Processes(logs, env)
    try:
        with _sigterm_as_interrupt():
            link = procs.start("superlink", superlink_cmd(port, material))
            _wait_port(port, link)
            if material is not None:
                register_nodes(list(material.node_keys), env, logs)
            for i, site in enumerate(site_paths):
                key = material.node_keys[i] if material else None
                procs.start(f"supernode-{i}", supernode_cmd(port, site, material, key))
            (out / "pids.json").write_text(json.dumps(procs.pgids()))
            cmd = [_bin("flwr"), "run", str(APP_DIR), CONNECTION, "--stream"]
            cmd += ["--run-config", str(out / "run_config.toml")]
            with open(logs / "flwr-run.log", "ab") as f:
                runner = subprocess.Popen(
                    cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
                procs.procs.append(("flwr-run", runner))
                try:
                    runner.wait(timeout_s)
                except subprocess.TimeoutExpired as exc:
                    raise TimeoutError(f"flwr run took over {timeout_s:.0f} s") from exc
    finally:
        procs.stop()
    server = Path(str(cfg["out-dir"]))
    if not (server / "best.pt").is_file():
        tail = (logs / "flwr-run.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the federated run left no best.pt in {server}; flwr run said:\n{tail}")
    return server
