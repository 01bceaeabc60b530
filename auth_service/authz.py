"""Authorization: which device, with which token, may call which method on which subjects.

Every device is registered in one scope (a site or tenant; "default" when none is given).
A subject lives in the scope of the device that first enrolled it: the same subject id in
another scope is another subject, invisible from here, so no scope can read, verify,
rekey, revoke or even detect another's subjects, and Identify searches the caller's scope
only. App tokens carry a scope, the devices they were issued to (a token issued without
devices binds to the first device that signs with it, unless it was issued as shared),
and the methods they may call: Verify and Identify by default; Enroll, Rekey and Revoke
only when granted by name. Below the scope, a subject belongs to the app (token) that
enrolled it: only that app, or the admin, may add templates, rekey or revoke it. The
admin token may call every method, on the subjects of the signing device's scope.
"""

from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass

DEFAULT_SCOPE = "default"
AUTH_METHODS = ("Enroll", "Verify", "Identify", "Rekey", "Revoke")
# A camera's token decides, nothing more: writing templates is a grant of its own.
DEFAULT_METHODS = frozenset({"Verify", "Identify"})
WRITE_METHODS = frozenset({"Enroll", "Rekey", "Revoke"})
_SCOPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Joins scope and subject id in the store; subject ids are printable, so never contain it.
_SEP = "\x1f"


class AuthzError(Exception):
    """A caller may not do what it asked (PERMISSION_DENIED)."""


def check_scope(scope: str) -> str:
    """Return a valid scope name (empty means the default scope), or raise ValueError."""
    scope = scope or DEFAULT_SCOPE
    if not _SCOPE.fullmatch(scope):
        raise ValueError("scope must be 1-64 letters, digits, '.', '_' or '-'")
    return scope


def check_methods(methods) -> frozenset[str]:
    """Return the methods a token may call (empty: the default set), or raise ValueError."""
    unknown = sorted(set(methods) - set(AUTH_METHODS))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(AUTH_METHODS)}")
    return frozenset(methods) or DEFAULT_METHODS


@dataclass(frozen=True)
class Grant:
    """What one bearer token allows."""

    app: str
    scope: str = DEFAULT_SCOPE
    devices: frozenset[str] = frozenset()  # empty: shared by the scope, or not yet bound
    methods: frozenset[str] = DEFAULT_METHODS
    admin: bool = False
    shared: bool = False  # issued for every device of the scope (opt-in)


ADMIN_GRANT = Grant("admin", methods=frozenset(AUTH_METHODS), admin=True)


@dataclass(frozen=True)
class Caller:
    """Who makes the current call: the token's app, the signing device and its scope."""

    app: str
    device: str
    scope: str
    admin: bool = False
    # The token may Enroll or Rekey: it can put any face in the subjects its app owns.
    may_change: bool = False


# The authorized caller of the current call, set by the interceptor (or per stream probe).
CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("kfaar_caller", default=None)
# The token's grant, for the stream, whose probes are authorized one by one.
GRANT: contextvars.ContextVar[Grant | None] = contextvars.ContextVar("kfaar_grant", default=None)


def authorize(grant: Grant, device: str, device_scope: str, method: str) -> Caller:
    """Return the caller if ``grant`` lets ``device`` call ``method``; else raise AuthzError."""
    if not grant.admin:
        if grant.scope != device_scope:
            raise AuthzError(
                f"the token of scope {grant.scope!r} cannot be used by a device of another scope"
            )
        if grant.devices and device not in grant.devices:
            raise AuthzError(f"the token was not issued to device {device!r}")
    if method not in grant.methods:
        hint = f": {method} must be granted by name" if method in WRITE_METHODS else ""
        raise AuthzError(f"the token may not call {method}{hint}")
    may_change = bool(grant.methods & {"Enroll", "Rekey"})
    return Caller(grant.app, device, device_scope, grant.admin, may_change)


def subject_key(scope: str, subject: str) -> str:
    """Return the store's key of a subject of a scope (default-scope ids are unchanged)."""
    return subject if scope == DEFAULT_SCOPE else f"{scope}{_SEP}{subject}"


def key_scope(key: str) -> str:
    """Return the scope a stored subject key belongs to."""
    return key.split(_SEP, 1)[0] if _SEP in key else DEFAULT_SCOPE


def key_subject(key: str) -> str:
    """Return the subject id, as its scope knows it, of a stored subject key."""
    return key.split(_SEP, 1)[1] if _SEP in key else key


def shown(key: str) -> str:
    """Write a stored subject key for the audit log and messages: ``scope/subject``."""
    return key.replace(_SEP, "/")
