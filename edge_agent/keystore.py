"""The edge keystore: subject and site keys plus the device's signing key, sealed at rest.

The file is JSON. Its key-encryption key (KEK) comes from a passphrase through Argon2id
(``nacl.pwhash``), or from a 32-byte device secret through keyed BLAKE2b. Each entry is
sealed on its own with ``SecretBox`` under the KEK, together with its name, so entries
cannot be swapped between names unnoticed. A sealed check value tells a wrong passphrase
from a corrupted entry. Writes go to a 0600 temporary file that replaces the old one.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nacl.encoding
import nacl.exceptions
import nacl.hash
import nacl.pwhash
import nacl.secret
import nacl.signing
import nacl.utils

from edge_agent.keys import check_key, fingerprint, new_key

FORMAT = 1
CHECK = b"kfaar-keystore-v1"
KINDS = ("subject", "site")
DEVICE = "device"  # the reserved entry for the Ed25519 signing key
KDF_LIMITS = {  # name -> (opslimit, memlimit) of nacl.pwhash.argon2id
    "interactive": (
        nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE,
        nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE,
    ),
    "moderate": (nacl.pwhash.argon2id.OPSLIMIT_MODERATE, nacl.pwhash.argon2id.MEMLIMIT_MODERATE),
    "sensitive": (nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE, nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE),
}


class KeystoreError(ValueError):
    """The keystore is missing, unreadable, locked with another secret, or lacks an entry."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


def passphrase_kek(passphrase: bytes, salt: bytes, ops: int, mem: int) -> bytes:
    """Derive the KEK from a passphrase with Argon2id."""
    if not passphrase:
        raise KeystoreError("the keystore passphrase is empty")
    return nacl.pwhash.argon2id.kdf(32, passphrase, salt, opslimit=ops, memlimit=mem)


def device_secret_kek(secret: bytes, salt: bytes) -> bytes:
    """Derive the KEK from a 32-byte device secret (a TPM-sealed blob, a secrets mount)."""
    if len(secret) != 32:
        raise KeystoreError(f"a device secret must be 32 bytes, got {len(secret)}")
    return nacl.hash.blake2b(
        salt, digest_size=32, key=secret, person=b"kfaar-kek-v1", encoder=nacl.encoding.RawEncoder
    )


@dataclass(frozen=True)
class Entry:
    """What ``list`` shows about an entry: never the key itself."""

    name: str
    kind: str
    fingerprint: str
    created: float
    generation: int


class Keystore:
    """Open with :meth:`create` or :meth:`open`; every change is written at once."""

    def __init__(self, path: Path, doc: dict, kek: bytes) -> None:
        self.path, self._doc, self._box = path, doc, nacl.secret.SecretBox(kek)

    # -- opening -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: Path,
        passphrase: bytes | None = None,
        device_secret: bytes | None = None,
        limits: str = "moderate",
    ) -> Keystore:
        """Create a new keystore with a fresh device signing key; refuse to overwrite one."""
        path = Path(path)
        if path.exists():
            raise KeystoreError(f"{path} already exists; refusing to overwrite a keystore")
        salt = nacl.utils.random(nacl.pwhash.argon2id.SALTBYTES)
        if (passphrase is None) == (device_secret is None):
            raise KeystoreError("give exactly one of a passphrase or a device secret")
        if passphrase is not None:
            ops, mem = KDF_LIMITS[limits]
            kdf = {"alg": "argon2id", "salt": _b64(salt), "opslimit": ops, "memlimit": mem}
            kek = passphrase_kek(passphrase, salt, ops, mem)
        else:
            kdf = {"alg": "blake2b-device-secret", "salt": _b64(salt)}
            kek = device_secret_kek(device_secret, salt)
        doc = {"format": FORMAT, "kdf": kdf, "check": "", "entries": {}}
        store = cls(path, doc, kek)
        doc["check"] = _b64(store._box.encrypt(CHECK))
        store._put(DEVICE, "device", nacl.signing.SigningKey.generate().encode())
        return store

    @classmethod
    def open(
        cls, path: Path, passphrase: bytes | None = None, device_secret: bytes | None = None
    ) -> Keystore:
        """Open an existing keystore; a wrong secret raises KeystoreError."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
            kdf, salt = doc["kdf"], _unb64(doc["kdf"]["salt"])
            if doc.get("format") != FORMAT:
                raise KeystoreError(f"{path}: unsupported keystore format {doc.get('format')!r}")
        except FileNotFoundError:
            raise KeystoreError(
                f"no keystore at {path} (create one with: kfaar keys init)"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeystoreError(f"{path} is not a readable keystore: {exc}") from exc
        if kdf["alg"] == "argon2id":
            if passphrase is None:
                raise KeystoreError(f"{path} is locked with a passphrase")
            kek = passphrase_kek(passphrase, salt, kdf["opslimit"], kdf["memlimit"])
        elif kdf["alg"] == "blake2b-device-secret":
            if device_secret is None:
                raise KeystoreError(f"{path} is locked with a device secret")
            kek = device_secret_kek(device_secret, salt)
        else:
            raise KeystoreError(f"{path}: unknown key derivation {kdf['alg']!r}")
        store = cls(path, doc, kek)
        try:
            ok = store._box.decrypt(_unb64(doc["check"])) == CHECK
        except (nacl.exceptions.CryptoError, ValueError):
            ok = False
        if not ok:
            raise KeystoreError(f"wrong passphrase or device secret for {path}")
        return store

    # -- entries ---------------------------------------------------------------------
    def add(self, name: str, kind: str = "subject") -> bytes:
        """Create a fresh key for a subject or a site; refuse an existing name."""
        self._check_name(name)
        if kind not in KINDS:
            raise KeystoreError(f"kind must be one of {KINDS}, got {kind!r}")
        if name in self._doc["entries"]:
            raise KeystoreError(f"{name!r} already has a key (use rotate)")
        key = new_key()
        self._put(name, kind, key)
        return key

    def key(self, name: str) -> bytes:
        """Return the current key of ``name``."""
        return check_key(self._open(name))

    def previous_key(self, name: str) -> bytes | None:
        """Return the key that ``rotate`` replaced, kept for rekeying templates."""
        entry = self._entry(name)
        return self._unseal(name, entry["previous"]) if entry.get("previous") else None

    def rotate(self, name: str) -> bytes:
        """Replace ``name``'s key by a fresh one; the old one stays as ``previous_key``."""
        entry = self._entry(name)
        if entry["kind"] not in KINDS:
            raise KeystoreError(f"{name!r} is not a subject or site key")
        key = new_key()
        self._put(
            name, entry["kind"], key, previous=entry["box"], generation=entry["generation"] + 1
        )
        return key

    def entries(self) -> list[Entry]:
        """Return the subject and site entries, without their keys."""
        return [
            Entry(n, e["kind"], e["fingerprint"], e["created"], e["generation"])
            for n, e in sorted(self._doc["entries"].items())
            if e["kind"] in KINDS
        ]

    def signing_key(self) -> nacl.signing.SigningKey:
        """Return the device's Ed25519 signing key."""
        return nacl.signing.SigningKey(self._open(DEVICE))

    # -- internals -------------------------------------------------------------------
    @staticmethod
    def _check_name(name: str) -> None:
        if not name or len(name) > 128 or name == DEVICE or not name.isprintable():
            raise KeystoreError(f"invalid entry name {name!r}")

    def _entry(self, name: str) -> dict:
        try:
            return self._doc["entries"][name]
        except KeyError:
            raise KeystoreError(f"no key named {name!r} in {self.path}") from None

    def _seal(self, name: str, secret: bytes) -> str:
        return _b64(self._box.encrypt(name.encode() + b"\0" + secret))

    def _unseal(self, name: str, box: str) -> bytes:
        try:
            plain = self._box.decrypt(_unb64(box))
        except (nacl.exceptions.CryptoError, ValueError) as exc:
            raise KeystoreError(f"entry {name!r} in {self.path} is corrupted") from exc
        label, _, secret = plain.partition(b"\0")
        if label != name.encode():
            raise KeystoreError(f"entry {name!r} in {self.path} was sealed for another name")
        return secret

    def _open(self, name: str) -> bytes:
        return self._unseal(name, self._entry(name)["box"])

    def _put(
        self, name: str, kind: str, secret: bytes, previous: str | None = None, generation: int = 1
    ) -> None:
        fp = (
            fingerprint(secret)
            if kind in KINDS
            else nacl.signing.SigningKey(secret).verify_key.encode().hex()[:16]
        )
        self._doc["entries"][name] = {
            "kind": kind,
            "box": self._seal(name, secret),
            "fingerprint": fp,
            "created": time.time(),
            "generation": generation,
            **({"previous": previous} if previous else {}),
        }
        self._save()

    def _save(self) -> None:
        """Write atomically: a 0600 temporary file in the same folder, fsync, rename."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".keystore-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(self._doc, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
