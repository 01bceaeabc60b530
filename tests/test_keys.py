"""Subject keys: size, derivation with domain separation, bit flips, fingerprints."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.keys import check_key, derive, fingerprint, flip_bits, new_key, seeded_rng
from training.evaluation.keyring import Keyring


def test_new_keys_are_32_random_bytes() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100 and all(len(k) == 32 for k in keys)


def test_derivation_separates_purposes_and_keys() -> None:
    k = new_key()
    assert derive(k, "a") != derive(k, "b")
    assert derive(k, "a") == derive(k, "a")
    assert derive(k, "a") != derive(flip_bits(k, 1, np.random.default_rng(0)), "a")
    assert len(derive(k, "a", 64)) == 64


def test_one_bit_changes_the_derived_stream() -> None:
    k = new_key()
    rng = np.random.default_rng(1)
    a = seeded_rng(k, "p").permutation(100)
    b = seeded_rng(flip_bits(k, 1, rng), "p").permutation(100)
    assert (a != b).mean() > 0.9


@pytest.mark.parametrize("count", [0, 1, 3, 5, 16, 256])
def test_flip_bits_flips_exactly_that_many(count: int) -> None:
    k = new_key()
    flipped = flip_bits(k, count, np.random.default_rng(count))
    diff = np.unpackbits(np.frombuffer(k, np.uint8) ^ np.frombuffer(flipped, np.uint8))
    assert int(diff.sum()) == count


@pytest.mark.parametrize("bad", [b"", b"x" * 31, b"x" * 33, "x" * 32, None])
def test_wrong_sized_keys_are_refused_without_echoing_them(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        check_key(bad)  # type: ignore[arg-type]
    assert "xxxx" not in str(info.value)


def test_fingerprint_is_stable_short_and_not_the_key() -> None:
    k = new_key()
    assert fingerprint(k) == fingerprint(k)
    assert len(fingerprint(k)) == 16 and fingerprint(k) not in k.hex()
    assert fingerprint(k) != fingerprint(new_key())


def test_keyring_is_reproducible_only_with_a_seed() -> None:
    assert Keyring(7).key("alice") == Keyring(7).key("alice")
    assert Keyring(7).key("alice") != Keyring(8).key("alice")
    assert Keyring().key("alice") != Keyring().key("alice")
    ring = Keyring()
    assert ring.key("bob") == ring.key("bob")
