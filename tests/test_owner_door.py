"""The owner's new door: strangers filling alice's subject budget must not lock it out.

Devices of other apps in alice's scope, missing on her, fill her subject-wide budget. A
door of her owner app (the app that enrolled her) that never matched her used to be
refused RESOURCE_EXHAUSTED "retry in 60 s" again and again; it is exempt from the subject
budget now, while every other app's devices are still bounded by it (docs/SECURITY.md).
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from authz_kit import ROOMY_RATE, Site, code, unit
from test_guessing import answered

from auth_service.ratelimit import GuessBudgets

DEFAULTS = GuessBudgets()  # what `kfaar serve` runs with: subject burst 20, pair burst 5
STRANGERS = [f"b-{i}" for i in range(5)]


@pytest.fixture
def site(tmp_path: Path):
    # The strangers' flood is many calls in a blink: the call rate is made roomy so that
    # only the guess budgets refuse them.
    s = Site(tmp_path / "kfaar.db", budgets=DEFAULTS, limits=ROOMY_RATE)
    yield s
    s.stop()


def flood(site: Site) -> tuple[str, str]:
    """Enroll alice from app A's door a-1, fill her subject budget from app B; the tokens."""
    token_a = site.token("app-a", devices=["a-1", "a-2", "a-3"], methods=["Enroll", "Verify"])
    site.client("a-1", token=token_a).enroll("alice", unit(1))
    token_b = site.token("app-b", devices=[*STRANGERS, "b-new"], methods=["Verify"])
    got = [answered(lambda d=d: site.client(d, token=token_b).verify("alice", unit(2)), 8)
           for d in STRANGERS]  # fmt: skip
    # Each stranger's device stops at its pair budget (5); together at alice's budget (20).
    assert got == [5, 5, 5, 5, 0]
    return token_a, token_b


def test_a_new_door_of_the_owner_app_is_served_after_strangers_fill_the_subject(site) -> None:
    token_a, _ = flood(site)
    new_door = site.client("a-2", token=token_a)  # never matched alice
    assert new_door.verify("alice", unit(1))  # before the fix: RESOURCE_EXHAUSTED, retry 60 s


def test_the_exemption_does_not_leak_to_another_app(site) -> None:
    _, token_b = flood(site)
    stranger = site.client("b-new", token=token_b)  # a new device of app B, matching probe
    assert code(lambda: stranger.verify("alice", unit(1))) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_owner_apps_new_door_keeps_its_pair_budget(site) -> None:
    token_a, _ = flood(site)
    door = site.client("a-3", token=token_a)
    assert answered(lambda: door.verify("alice", unit(3)), 8) == DEFAULTS.pair.burst
    with pytest.raises(grpc.RpcError) as exc:
        door.verify("alice", unit(1))  # even a match waits: the pair budget is full
    assert "(pair)" in exc.value.details()


def test_an_owner_app_that_may_no_longer_change_the_subject_is_not_exempt(site) -> None:
    flood(site)
    # The admin re-issues app A's token verify-only: it can no longer put a face in alice,
    # so the reason for the exemption is gone and the subject budget holds it again.
    token_a = site.token("app-a", devices=["a-1", "a-2", "a-3"], methods=["Verify"])
    door = site.client("a-2", token=token_a)
    assert code(lambda: door.verify("alice", unit(1))) == grpc.StatusCode.RESOURCE_EXHAUSTED
