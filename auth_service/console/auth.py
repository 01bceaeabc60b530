"""Who may use the console: operator tokens, sessions, CSRF tokens and login rate limits.

Operators log in with the admin token (role ``admin``, every scope) or an operator token
from the operators file (role ``write`` or ``read``, one scope or ``*``). Sessions live in
this process only: a restart logs everyone out. Session ids and CSRF tokens come from
PyNaCl's CSPRNG; the operators file holds BLAKE2b hashes of tokens, never the tokens.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import nacl.encoding
import nacl.hash
import nacl.utils

ROLES = ("admin", "write", "read")
ALL_SCOPES = "*"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def random_token(nbytes: int = 32) -> str:
    """Return ``nbytes`` from the CSPRNG as URL-safe text."""
    return base64.urlsafe_b64encode(nacl.utils.random(nbytes)).rstrip(b"=").decode()


def operator_hash(token: str) -> bytes:
    """Hash an operator token for the operators file."""
    return nacl.hash.blake2b(
        token.encode(), digest_size=32, person=b"kfaar-console-op", encoder=nacl.encoding.RawEncoder
    )


@dataclass(frozen=True)
class Operator:
    """A person at the console: name, role and the scope they see (``*``: all)."""

    name: str
    role: str
    scope: str = ALL_SCOPES

    @property
    def can_write(self) -> bool:
        return self.role in ("admin", "write")

    def sees(self, scope: str) -> bool:
        """Return whether this operator may see and act on ``scope``."""
        return self.scope in (ALL_SCOPES, scope)


def check_operator(name: str, role: str, scope: str) -> None:
    """Raise ValueError unless name, role and scope are valid for the operators file."""
    from auth_service.authz import check_scope

    if not _NAME.fullmatch(name):
        raise ValueError("operator name must be 1-64 letters, digits, '.', '_', '@' or '-'")
    if role not in ("write", "read"):
        raise ValueError("role must be write or read")
    if scope != ALL_SCOPES:
        check_scope(scope)


def add_operator(path: Path, name: str, role: str, scope: str) -> str:
    """Append an operator to the file (mode 0600) and return the token, shown once."""
    check_operator(name, role, scope)
    if any(op.name == name for op, _ in load_operators(path)):
        raise ValueError(f"operator {name!r} exists already in {path}")
    token = random_token()
    line = f"{name}\t{role}\t{scope}\t{operator_hash(token).hex()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(line)
    return token


def load_operators(path: Path | None) -> list[tuple[Operator, bytes]]:
    """Read ``name<TAB>role<TAB>scope<TAB>hash`` lines; raise ValueError on a bad line."""
    if path is None or not Path(path).exists():
        return []
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        try:
            name, role, scope, digest = parts
            check_operator(name, role, scope)
            out.append((Operator(name, role, scope), bytes.fromhex(digest)))
        except ValueError:
            msg = f"{path}:{n}: want name, role, scope and hash, tab-separated"
            raise ValueError(msg) from None
    return out


class Directory:
    """Match a presented token against the admin token and the operators file."""

    def __init__(self, admin_token: str | None, operators: Path | None) -> None:
        self.admin = operator_hash(admin_token) if admin_token else None
        self.path = operators
        load_operators(operators)  # a malformed file is an error at start, not at login

    def login(self, token: str) -> Operator | None:
        """Return the operator this token names, or None."""
        h = operator_hash(token)
        found = None
        # Compare against every entry, so the time taken does not tell which one matched.
        if self.admin is not None and hmac.compare_digest(h, self.admin):
            found = Operator("admin", "admin")
        for op, digest in load_operators(self.path):  # re-read: removals apply at once
            if hmac.compare_digest(h, digest):
                found = found or op
        return found


@dataclass
class Session:
    operator: Operator
    csrf: str
    created: float
    seen: float
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, message)


class Sessions:
    """Server-side sessions: a random id in the cookie, idle and absolute expiry."""

    def __init__(self, idle_s: float = 900.0, max_s: float = 8 * 3600.0) -> None:
        self.idle_s, self.max_s = idle_s, max_s
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, operator: Operator) -> tuple[str, Session]:
        """Start a session under a fresh id (never one the browser offered: no fixation)."""
        now = time.time()
        sid = random_token()
        s = Session(operator, random_token(), now, now)
        with self._lock:
            self._expire(now)
            self._by_id[sid] = s
        return sid, s

    def get(self, sid: str | None) -> Session | None:
        """Return the live session of this id, refreshing its idle timer."""
        if not sid:
            return None
        now = time.time()
        with self._lock:
            s = self._by_id.get(sid)
            if s is None:
                return None
            if now - s.seen > self.idle_s or now - s.created > self.max_s:
                del self._by_id[sid]
                return None
            s.seen = now
            return s

    def drop(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)

    def _expire(self, now: float) -> None:
        dead = [
            k
            for k, s in self._by_id.items()
            if now - s.seen > self.idle_s or now - s.created > self.max_s
        ]
        for k in dead:
            del self._by_id[k]


class LoginLimiter:
    """Failed logins per client address and in all: refuse for a while after too many."""

    def __init__(self, per_client: int = 5, overall: int = 50, window_s: float = 300.0) -> None:
        self.per_client, self.overall, self.window_s = per_client, overall, window_s
        self._fails: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def wait(self, client: str, now: float | None = None) -> float:
        """Return the seconds ``client`` must wait before another try (0: may try now)."""
        now = time.time() if now is None else now
        with self._lock:
            for k in list(self._fails):
                self._fails[k] = [t for t in self._fails[k] if now - t < self.window_s]
                if not self._fails[k]:
                    del self._fails[k]
            mine = self._fails.get(client, [])
            every = sorted(t for ts in self._fails.values() for t in ts)
            waits = [0.0]
            if len(mine) >= self.per_client:
                waits.append(mine[-self.per_client] + self.window_s - now)
            if len(every) >= self.overall:
                waits.append(every[-self.overall] + self.window_s - now)
            return max(waits)

    def failed(self, client: str, now: float | None = None) -> None:
        with self._lock:
            self._fails.setdefault(client, []).append(time.time() if now is None else now)
