"""The service's own secret: signs audit checkpoints and tags templates, kept out of the DB.

One 32-byte seed from PyNaCl's CSPRNG, in a file readable by the service only (0600):
``<db>.key`` next to a SQLite store by default, or ``$KFAAR_SERVICE_KEY_FILE``. Keys are
derived from it, each under its own BLAKE2b personalisation: an Ed25519 signing key for
audit checkpoints, another for door access grants (auth_service/access_grant.py), and
HMAC-SHA256 keys for template and generation integrity tags. Someone who can write the
database but not read this file can neither forge a checkpoint nor make a template the
service accepts, nor sign a grant a door controller opens for.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import nacl.encoding
import nacl.hash
import nacl.signing
import nacl.utils

log = logging.getLogger(__name__)

KEY_ENV = "KFAAR_SERVICE_KEY_FILE"
SEED_BYTES = 32


class ServiceKeyError(Exception):
    """The service key file is missing, unreadable or malformed."""


def _derive(seed: bytes, person: bytes) -> bytes:
    return nacl.hash.blake2b(seed, digest_size=32, person=person, encoder=nacl.encoding.RawEncoder)


@dataclass(frozen=True)
class ServiceKey:
    """The keys derived from the service seed."""

    seed: bytes

    # Derived once: a derivation per tag made checking a million rows take 10x longer.
    @cached_property
    def _tag_key(self) -> bytes:
        return _derive(self.seed, b"kfaar-tmpl-tag")

    @cached_property
    def _generation_key(self) -> bytes:
        return _derive(self.seed, b"kfaar-gen-tag")

    @property
    def signing(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(_derive(self.seed, b"kfaar-audit-sig"))

    @property
    def verify_key(self) -> bytes:
        return self.signing.verify_key.encode()

    @cached_property
    def grant_signing(self) -> nacl.signing.SigningKey:
        """Return the key that signs door access grants (derived once: one per decision)."""
        # Its own personalisation: a grant can never pass as an audit checkpoint signature.
        return nacl.signing.SigningKey(_derive(self.seed, b"kfaar-grant-sig"))

    @cached_property
    def grant_verify_key(self) -> bytes:
        return self.grant_signing.verify_key.encode()

    def tag(
        self, subject: str, model: str, space: int, vector: bytes, generation: int | None = None
    ) -> bytes:
        """Return the HMAC-SHA256 integrity tag of one stored template.

        ``generation`` binds the tag to the subject's generation (schema 6); None gives the
        tag of schema 5, which only ``kfaar db migrate`` still reads, to re-tag.
        """
        key = self._tag_key
        msg = b"\0".join([subject.encode(), model.encode(), str(int(space)).encode(), vector])
        if generation is not None:
            msg += b"\0g" + str(int(generation)).encode()
        return hmac.new(key, msg, hashlib.sha256).digest()

    def check(
        self,
        tag: bytes | None,
        subject: str,
        model: str,
        space: int,
        vector: bytes,
        generation: int | None = None,
    ) -> bool:
        """Return whether ``tag`` is this service's tag of the template."""
        return tag is not None and hmac.compare_digest(
            bytes(tag), self.tag(subject, model, space, vector, generation)
        )

    def generation_tag(self, subject: str, generation: int, timeline: bytes = b"") -> bytes:
        """Return the HMAC-SHA256 tag of a subject's generation counter on a timeline.

        ``timeline`` is the database's (auth_service/store_generations.py): empty for one
        that never had one, which gives the tags of before timelines.
        """
        key = self._generation_key
        msg = subject.encode() + b"\0" + str(int(generation)).encode()
        if timeline:
            msg += b"\0t" + timeline
        return hmac.new(key, msg, hashlib.sha256).digest()

    def check_generation(
        self, tag: bytes | None, subject: str, generation: int | None, timeline: bytes = b""
    ) -> bool:
        """Return whether ``tag`` is this service's tag of the subject's generation."""
        return (
            tag is not None
            and generation is not None
            and hmac.compare_digest(bytes(tag), self.generation_tag(subject, generation, timeline))
        )


def default_path(db: Path | str) -> Path:
    """Return where the key of a SQLite store lives by default: next to it."""
    return Path(f"{db}.key")


def create(path: Path) -> ServiceKey:
    """Write a fresh seed to ``path`` (0600, never over an existing file) and return it."""
    seed = nacl.utils.random(SEED_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(seed.hex() + "\n")
    log.info("created the service key %s", path)
    return ServiceKey(seed)


def load(path: Path) -> ServiceKey:
    """Read the seed at ``path``, or raise ServiceKeyError."""
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ServiceKeyError(f"cannot read the service key {path}: {exc.strerror}") from None
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        seed = b""
    if len(seed) != SEED_BYTES:
        raise ServiceKeyError(f"{path} is not a kfaar service key (64 hex digits)")
    return ServiceKey(seed)


def load_or_create(path: Path, create_missing: bool) -> ServiceKey:
    """Load the key at ``path``; create it when missing and ``create_missing``."""
    if not Path(path).exists():
        if not create_missing:
            raise ServiceKeyError(
                f"no service key at {path}: `kfaar db init` creates one with the database "
                f"(or set ${KEY_ENV})"
            )
        return create(Path(path))
    return load(path)
