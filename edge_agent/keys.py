"""Subject keys: generation from PyNaCl's CSPRNG, domain-separated derivation, fingerprints."""

from __future__ import annotations

import nacl.encoding
import nacl.hash
import nacl.utils
import numpy as np

KEY_BYTES = 32
_RAW = nacl.encoding.RawEncoder


def new_key() -> bytes:
    """Return a fresh 32-byte key from the operating system's CSPRNG (through libsodium)."""
    return nacl.utils.random(KEY_BYTES)


def check_key(key: bytes) -> bytes:
    """Return ``key`` if it is 32 bytes, else raise ValueError (without echoing the key)."""
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
        raise ValueError(f"a subject key must be {KEY_BYTES} bytes, got {size}")
    return bytes(key)


def derive(key: bytes, purpose: str, size: int = 32) -> bytes:
    """Derive ``size`` bytes for one ``purpose`` by keyed BLAKE2b; purposes never collide."""
    person = purpose.encode()
    if len(person) > 16:
        raise ValueError(f"purpose {purpose!r} is longer than BLAKE2b's 16-byte personalisation")
    return nacl.hash.blake2b(b"", digest_size=size, key=check_key(key), person=person, encoder=_RAW)


def seeded_rng(key: bytes, purpose: str) -> np.random.Generator:
    """Return a numpy generator seeded from the key for one purpose."""
    return np.random.default_rng(np.frombuffer(derive(key, purpose, 32), dtype=np.uint64))


def fingerprint(key: bytes) -> str:
    """Return a public 16-hex-digit fingerprint that reveals nothing usable about the key."""
    digest = nacl.hash.blake2b(check_key(key), digest_size=8, person=b"kfaar-key-fp", encoder=_RAW)
    return digest.hex()


def flip_bits(key: bytes, count: int, rng: np.random.Generator) -> bytes:
    """Return a copy of ``key`` with ``count`` distinct random bits inverted."""
    key = check_key(key)
    if not 0 <= count <= 8 * KEY_BYTES:
        raise ValueError(f"cannot flip {count} bits of a {8 * KEY_BYTES}-bit key")
    bits = np.unpackbits(np.frombuffer(key, np.uint8))
    bits[rng.choice(bits.size, size=count, replace=False)] ^= 1
    return np.packbits(bits).tobytes()
