#!/usr/bin/env python3
"""Check a kfaar access grant before opening a door: signature, expiry, device, single use.

Standalone: the Python standard library and PyNaCl, nothing of kfaar, so it runs on the
door controller, apart from the camera it guards. The grant is the service's Ed25519
signature over ``b"kfaar-grant/1\\n"`` and canonical JSON (auth_service/access_grant.py);
the camera only carries it. As a library::

    seen = {}  # attempt id -> expiry (ms); keep it for the controller's lifetime
    claims = verify_grant(body["grant"], VERIFY_KEY, "door1", time.time(), seen)

As a command, with a decision JSON (the edge's hook input or webhook body) on stdin::

    verify_grant.py --key-file grant.pub --device door1 --seen /var/lib/door/seen.json

exit 0: open (the claims on stdout); 1: refuse (the reason on stderr); 2: usage.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import fcntl
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import MutableMapping
from pathlib import Path

import nacl.exceptions
import nacl.signing

PREFIX = b"kfaar-grant/1\n"
VERSION = 1
SIGNATURE_BYTES = 64
MAX_GRANT_BYTES = 2048  # ids are at most a few hundred bytes; anything longer is not ours
DEFAULT_SKEW_S = 2.0  # clock difference tolerated between the service and the controller
MAX_SKEW_S = 60.0  # more makes a grant's expiry (10 s by default) meaningless


class GrantRefused(Exception):
    """The grant does not let this door open; the message says why."""


def load_verify_key(text: str | bytes) -> nacl.signing.VerifyKey:
    """Return the verify key from 32 raw bytes, hex or base64, or raise ValueError."""
    if isinstance(text, bytes) and len(text) == 32:
        return nacl.signing.VerifyKey(text)
    text = text.decode(errors="replace") if isinstance(text, bytes) else text
    text = text.strip()
    try:
        raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != 32:
        raise ValueError("the grant verify key must be 32 bytes, in hex or base64")
    return nacl.signing.VerifyKey(raw)


def check_skew(skew_s: float) -> float:
    """Return a clock skew in seconds, or raise ValueError for one out of range (or NaN)."""
    if not 0 <= skew_s <= MAX_SKEW_S:
        raise ValueError(f"the clock skew (--skew) must be 0 to {MAX_SKEW_S:.0f} s, not {skew_s}")
    return skew_s


def key_id(verify_key: bytes) -> str:
    """Return a verify key's id as grants name it: the first 8 bytes of its SHA-256, hex."""
    return hashlib.sha256(verify_key).hexdigest()[:16]


def _unverified_kid(body: bytes) -> str:
    """Read the key id of a grant whose signature failed, only to say which key made it."""
    try:
        kid = json.loads(body[len(PREFIX) :]).get("kid") if body.startswith(PREFIX) else None
    except (ValueError, AttributeError):
        return ""
    return kid if isinstance(kid, str) else ""


def _claims(body: bytes) -> dict:
    if not body.startswith(PREFIX):
        raise GrantRefused("not a kfaar access grant of version 1")
    try:
        claims = json.loads(body[len(PREFIX) :])
    except ValueError:
        raise GrantRefused("the grant's body is not JSON") from None
    fields = {"attempt": str, "device": str, "scope": str, "subject": str, "decision": str,
              "iat": int, "exp": int, "kid": str, "v": int}  # fmt: skip
    if not isinstance(claims, dict) or any(
        not isinstance(claims.get(k), t) or isinstance(claims.get(k), bool)
        for k, t in fields.items()
    ):
        raise GrantRefused("the grant lacks a field or has one of the wrong type")
    if claims["v"] != VERSION:
        raise GrantRefused(f"grant version {claims['v']} is not supported")
    if not claims["attempt"]:
        raise GrantRefused("the grant names no attempt")
    return claims


def verify_grant(
    grant_b64: str | None,
    verify_key: nacl.signing.VerifyKey | bytes | str,
    device_id: str,
    now: float | None = None,
    seen: MutableMapping[str, int] | None = None,
    scope: str | None = None,
    skew_s: float = DEFAULT_SKEW_S,
) -> dict:
    """Return the claims of a grant that opens ``device_id``'s door now, or raise GrantRefused.

    ``now`` is seconds since the Unix epoch (default: the clock). ``seen`` maps attempt
    ids to their expiry in ms: an attempt in it is refused as a replay, and a grant that
    opens is added to it; entries past their expiry are dropped (an expired grant is
    refused anyway). Without ``seen`` there is no single-use check: the caller must make one.
    """
    if not isinstance(verify_key, nacl.signing.VerifyKey):
        verify_key = load_verify_key(verify_key)
    if not grant_b64:
        raise GrantRefused("no grant: only a decision the service signed opens this door")
    if not isinstance(grant_b64, str) or len(grant_b64) > MAX_GRANT_BYTES * 4 // 3 + 4:
        raise GrantRefused("the grant is not a string of the expected size")
    try:
        raw = base64.b64decode(grant_b64, validate=True)
    except (ValueError, binascii.Error):
        raise GrantRefused("the grant is not base64") from None
    if not SIGNATURE_BYTES < len(raw) <= MAX_GRANT_BYTES:
        raise GrantRefused(f"the grant is {len(raw)} bytes: not a signed grant")
    try:
        body = verify_key.verify(raw)
    except nacl.exceptions.BadSignatureError:
        kid, ours = _unverified_kid(raw[SIGNATURE_BYTES:]), key_id(verify_key.encode())
        other = f" (it names key {kid}; this door trusts {ours})" if kid and kid != ours else ""
        raise GrantRefused(f"bad signature: not signed by this door's grant key{other}") from None
    claims = _claims(body)
    if claims["decision"] != "accept":
        raise GrantRefused(f"the grant's decision is {claims['decision']!r}, not accept")
    if claims["device"] != device_id:
        raise GrantRefused(f"the grant is for device {claims['device']!r}, not {device_id!r}")
    if scope is not None and claims["scope"] != scope:
        raise GrantRefused(f"the grant is for scope {claims['scope']!r}, not {scope!r}")
    now_ms = int((time.time() if now is None else now) * 1000)
    skew_ms = int(check_skew(skew_s) * 1000)
    if now_ms > claims["exp"] + skew_ms:
        raise GrantRefused(f"the grant expired {now_ms - claims['exp']} ms ago")
    if claims["iat"] > now_ms + skew_ms:
        raise GrantRefused("the grant is issued in the future: check the clocks")
    if seen is not None:
        for attempt, exp in list(seen.items()):
            if exp + skew_ms < now_ms:
                del seen[attempt]
        if claims["attempt"] in seen:
            raise GrantRefused(f"attempt {claims['attempt']!r} has opened already: a replay")
        seen[claims["attempt"]] = claims["exp"]
    return claims


class SeenFile:
    """The attempts that opened, kept in a JSON file, locked while one check runs.

    The lock is a file beside it (``PATH.lock``), and a save replaces the file whole (a
    temporary file, fsync, rename): a save that fails (a full disk, a power cut) leaves
    the previous list, never an emptied or cut one that would let an open grant in again.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)  # concurrent hook runs check one after another
        try:
            text = self.path.read_bytes()[: 1 << 24].decode(errors="replace") or "{}"
        except FileNotFoundError:
            text = "{}"
        except OSError:
            os.close(self.fd)
            raise
        try:
            seen = json.loads(text)
        except ValueError:
            seen = None
        if not isinstance(seen, dict):
            os.close(self.fd)
            raise ValueError(f"{path} is not a JSON object of attempt ids: fix or remove it")
        self.seen: dict[str, int] = seen

    def save(self) -> None:
        """Replace the file with the list now, or raise OSError and leave the old one."""
        data = memoryview(json.dumps(self.seen, sort_keys=True).encode())
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")  # 0600
        try:
            while data:  # os.write may write less than asked
                data = data[os.write(fd, data) :]
            os.fsync(fd)
            os.close(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.replace(tmp, self.path)
        folder = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself must survive a power cut
        finally:
            os.close(folder)

    def close(self) -> None:
        os.close(self.fd)  # releases the lock


def main(argv: list[str] | None = None) -> int:
    """Read one decision on stdin; exit 0 to open, 1 to refuse, 2 on a usage error."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--key", help="the grant verify key, hex or base64")
    key.add_argument("--key-file", type=Path, help="a file holding it")
    p.add_argument("--device", required=True, help="the camera of this door (its device id)")
    p.add_argument("--seen", type=Path, required=True,
                   help="JSON file of attempts that opened (single use across runs)")  # fmt: skip
    p.add_argument("--scope", default=None, help="also require this scope")
    p.add_argument("--skew", type=float, default=DEFAULT_SKEW_S, help="clock skew allowed (s)")
    args = p.parse_args(argv)
    try:
        text = args.key_file.read_text() if args.key_file else args.key
        verify_key = load_verify_key(text)
        check_skew(args.skew)
        seen = SeenFile(args.seen)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"{p.prog}: error: {exc}\n")
        return 2
    try:
        try:
            decision = json.loads(sys.stdin.buffer.read(1 << 20))
        except ValueError:
            raise GrantRefused("the decision on stdin is not JSON") from None
        if not isinstance(decision, dict):
            raise GrantRefused("the decision on stdin is not a JSON object")
        claims = verify_grant(decision.get("grant"), verify_key, args.device, time.time(),
                              seen.seen, args.scope, args.skew)  # fmt: skip
        try:
            seen.save()
        except OSError as exc:  # an open not recorded could be replayed: stay shut
            why = f"cannot record the attempt in {args.seen}: {exc.strerror}"
            raise GrantRefused(why) from None
    except GrantRefused as exc:
        sys.stderr.write(f"refused: {exc}\n")
        return 1
    finally:
        seen.close()
    sys.stdout.write(json.dumps(claims, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
