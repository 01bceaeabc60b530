"""Subject keys for an evaluation run: fresh from PyNaCl, or derived from ``--seed``."""

from __future__ import annotations

import nacl.encoding
import nacl.hash
import numpy as np

from edge_agent.keys import KEY_BYTES, new_key


class Keyring:
    """Hand out one key per name; with a seed the same names always get the same keys."""

    def __init__(self, seed: int | None = None) -> None:
        self.seed = None if seed is None else seed.to_bytes(16, "little", signed=True)
        self._keys: dict[str, bytes] = {}

    def key(self, name: str) -> bytes:
        if name not in self._keys:
            if self.seed is None:
                self._keys[name] = new_key()
            else:
                # Reproducible runs only: a seeded key is as secret as the seed.
                self._keys[name] = nacl.hash.blake2b(
                    name.encode(),
                    digest_size=KEY_BYTES,
                    key=self.seed,
                    person=b"kfaar-eval-key",
                    encoder=nacl.encoding.RawEncoder,
                )
        return self._keys[name]

    def rng(self, purpose: str) -> np.random.Generator:
        """Return a generator for non-key randomness (which bits to flip, say)."""
        if self.seed is None:
            return np.random.default_rng()
        digest = nacl.hash.blake2b(
            purpose.encode(), digest_size=16, key=self.seed, encoder=nacl.encoding.RawEncoder
        )
        return np.random.default_rng(np.frombuffer(digest, np.uint64))
