"""A stolen device whose probe matches: the per-device call rate bounds its calls.

A match costs no guess budget, so before the call rate one device made every matched
Verify, Identify or streamed probe it sent, each an audit row. Each attack runs against a
real loopback service (tests/authz_kit.py) with `kfaar serve`'s default rate (5 a second,
60 at once) unless the test configures another.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from authz_kit import Client, Site, emb, unit

from auth_service.limits import (
    DEFAULT_DEVICE_BURST,
    DEFAULT_DEVICE_RATE,
    CallRate,
    ResourceLimits,
    limits_from_args,
)
from edge_agent.cli import build_parser, main
from kfaar_pb.v1 import auth_pb2

FLOOD = 300


@pytest.fixture
def site(tmp_path: Path):
    s = Site(tmp_path / "kfaar.db")
    yield s
    s.stop()


def _flood(fn, n: int = FLOOD) -> tuple[int, list[grpc.RpcError], float]:
    """Call ``fn`` ``n`` times back to back; return the served, the refused, the seconds."""
    served, refused, started = 0, [], time.monotonic()
    for _ in range(n):
        try:
            fn()
            served += 1
        except grpc.RpcError as exc:
            refused.append(exc)
    return served, refused, time.monotonic() - started


def _allowed(seconds: float, spent: int = 0) -> int:
    """The most calls the default rate lets one device make in ``seconds``."""
    return DEFAULT_DEVICE_BURST - spent + int(seconds * DEFAULT_DEVICE_RATE) + 1


def test_a_flood_of_matching_verifies_is_cut_to_the_rate(site: Site) -> None:
    # Before: all 300 served, 300 audit rows (664 a second, ~7 GB of audit a day).
    thief = site.client("cam-stolen")
    thief.enroll("me", unit(1))  # its own face: every probe matches, no guess budget
    rows = len(site.running.store.audit_rows())
    served, refused, took = _flood(lambda: thief.verify("me", unit(1)))
    assert served <= _allowed(took, spent=1), (served, took)  # before: 300
    assert served >= DEFAULT_DEVICE_BURST - 1
    assert {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert "--device-rate" in refused[-1].details() and "retry in 1 s" in refused[-1].details()
    added = site.running.store.audit_rows()[rows:]
    decided = [r for r in added if r[6] in ("accept", "reject")]
    assert len(decided) == served  # one row per served call
    grouped = [r for r in added if r[6].startswith("refused: RESOURCE_EXHAUSTED")]
    assert len(grouped) <= took + 2  # refusals: one row a second, not one per call
    site.running.refusals.flush()
    counted = site.running.store.audit_rows()[rows:]
    assert sum(r[7] for r in counted if r[6].startswith("refused")) == len(refused)
    print(f"\nflood: {served} of {FLOOD} served in {took:.2f} s, {len(added)} audit rows")


def test_identify_is_limited_too(site: Site) -> None:
    thief = site.client("kiosk-stolen")
    thief.enroll("me", unit(1))
    served, refused, took = _flood(lambda: thief.identify(unit(1)))
    assert served <= _allowed(took, spent=1), (served, took)  # before: 300
    assert refused and {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_each_streamed_probe_counts_as_a_call(site: Site) -> None:
    thief = site.client("cam-stolen")
    thief.enroll("me", unit(1))

    def probes():
        for seq in range(1, FLOOD + 1):
            req = auth_pb2.VerifyRequest(subject_id="me", probe=emb(unit(1)))
            yield auth_pb2.AuthProbe(verify=thief.signed("Verify", req), sequence=seq)

    started = time.monotonic()
    out = list(thief.stub.StreamAuthenticate(probes(), metadata=thief.meta, timeout=30))
    took = time.monotonic() - started
    matched = [d for d in out if d.HasField("verify") and d.verify.match]
    over = [d for d in out if d.error_code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]]
    assert len(out) == FLOOD and len(matched) + len(over) == FLOOD
    assert len(matched) <= _allowed(took, spent=1), (len(matched), took)  # before: 300
    assert "--device-rate" in over[-1].error_message
    # The stream stays open and its device's unary calls share the same bucket.
    assert _code(lambda: thief.verify("me", unit(1))) == "RESOURCE_EXHAUSTED"


def _code(fn) -> str:
    try:
        fn()
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


def test_other_devices_and_the_admin_are_not_limited_by_one_device(site: Site) -> None:
    thief, door = site.client("cam-stolen"), site.client("door-2")
    thief.enroll("me", unit(1))
    door.enroll("alice", unit(2))
    _flood(lambda: thief.verify("me", unit(1)), 100)
    assert _code(lambda: thief.verify("me", unit(1))) == "RESOURCE_EXHAUSTED"
    assert door.verify("alice", unit(2))  # another device keeps its own bucket
    admin = site.as_admin(thief)  # the same device with the admin token: exempt
    served, refused, _ = _flood(lambda: admin.verify("me", unit(1)), 150)
    assert served == 150 and not refused


def test_the_rate_refills(tmp_path: Path) -> None:
    site = Site(tmp_path / "kfaar.db", limits=ResourceLimits(device_rate=20, device_burst=5))
    try:
        cam = site.client("cam-1")  # the Enroll is its first call
        cam.enroll("me", unit(1))
        served, refused, _ = _flood(lambda: cam.verify("me", unit(1)), 10)
        assert served <= 5 and len(refused) >= 5
        assert refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "20 calls a second, 5 at once" in refused[0].details()
        time.sleep(0.3)  # 6 calls' worth at 20 a second: the bucket is full again
        served, refused, _ = _flood(lambda: cam.verify("me", unit(1)), 5)
        assert served == 5 and not refused
    finally:
        site.stop()


def test_unknown_devices_get_no_bucket(site: Site) -> None:
    thief = site.client("cam-stolen")
    for i in range(50):  # ids it made up: refused before any bucket is made
        fake = Client(site.running.port, thief.token, f"made-up-{i}", thief.key)
        assert _code(lambda f=fake: f.verify("me", unit(1))) == "UNAUTHENTICATED"
    assert len(site.running.call_rate) == 0
    assert _code(lambda: thief.verify("nobody", unit(1))) == "NOT_FOUND"
    assert len(site.running.call_rate) == 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_honest_doors_and_kiosks_are_never_refused() -> None:
    clock = Clock()
    rate = CallRate(DEFAULT_DEVICE_RATE, DEFAULT_DEVICE_BURST, clock)
    for _ in range(3600):  # a busy 1:N kiosk: 2 calls a second for an hour
        assert rate.take("kiosk") == 0 and rate.take("kiosk") == 0
        clock.now += 1
    for _ in range(60):  # a door deciding one call a second
        assert rate.take("door") == 0
        clock.now += 1
    for _ in range(100):  # a camera streaming a visit's 10 probes at once, every 5 s
        assert all(rate.take("cam") == 0 for _ in range(10))
        clock.now += 5
    clock.now += 1000
    # One visit of 60 probes at once (the test kit's camera sends 30; kfaar demo 24).
    assert all(rate.take("visit") == 0 for _ in range(60))
    assert rate.take("visit") == pytest.approx(1 / DEFAULT_DEVICE_RATE)


def test_idle_buckets_are_forgotten() -> None:
    clock = Clock()
    rate = CallRate(5, 60, clock)
    for i in range(10_000):
        rate.take(f"dev-{i}")
    assert len(rate) == 10_000
    clock.now += 12  # 60 / 5 seconds: every bucket has filled up again
    rate.take("busy")
    assert len(rate) == 1  # a fresh bucket is the same as a full one: nothing is lost
    clock.now += 8
    for _ in range(100):  # emptied 4 s before the next sweep: 20 of 60 back by then
        rate.take("busy")
    clock.now += 4
    assert rate.take("late") == 0 and len(rate) == 2  # busy is kept, short of full
    assert rate.take("busy") == 0  # with the 20 it regained


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5", "want RATE,BURST"),
        ("five,60", "want RATE,BURST"),
        ("5,1.5", "want RATE,BURST"),
        ("0,60", "RATE must be a positive number"),
        ("nan,60", "RATE must be a positive number"),
        ("inf,60", "RATE must be a positive number"),
        ("5,0", "BURST must be at least 1"),
    ],
)
def test_a_bad_device_rate_is_a_usage_error(tmp_path: Path, capsys, value, message) -> None:
    db = ["--db", str(tmp_path / "x.db"), "--insecure"]
    assert main(["serve", *db, "--device-rate", value]) == 2
    assert message in capsys.readouterr().err


def test_the_device_rate_reads_the_environment_and_shows_in_help(monkeypatch, capsys) -> None:
    args = build_parser().parse_args(["serve", "--insecure"])
    limits = limits_from_args(args)[1]
    assert (limits.device_rate, limits.device_burst) == (5.0, 60)
    monkeypatch.setenv("KFAAR_DEVICE_RATE", "2.5,20")
    args = build_parser().parse_args(["serve", "--insecure"])
    limits = limits_from_args(args)[1]
    assert (limits.device_rate, limits.device_burst) == (2.5, 20)
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--device-rate" in out and "$KFAAR_DEVICE_RATE" in out
