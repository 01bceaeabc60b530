"""One stolen device inside its scope: streams, audit rows and enrolments it may not pile up.

Each attack runs against a real loopback service (tests/authz_kit.py) with a valid device
key and app token: authorization lets the calls through, the resource limits must not.
"""

from __future__ import annotations

import dataclasses
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from authz_kit import ROOMY_RATE, Client, Site, code, emb, unit

from auth_service.limits import ResourceLimits, limits_from_args
from auth_service.liveness_policy import LivenessPolicy
from edge_agent.cli import build_parser, main
from kfaar_pb.v1 import auth_pb2


class Stream:
    """One StreamAuthenticate call whose probes the test sends one at a time (or never)."""

    def __init__(self, client: Client) -> None:
        self.client, self.probes = client, queue.Queue()
        it = iter(self.probes.get, None)  # blocks while the test sends nothing: an idle stream
        self.call = client.stub.StreamAuthenticate(it, metadata=client.meta, timeout=30)

    def verify(self, subject: str, seq: int = 1) -> auth_pb2.AuthDecision:
        """Send one Verify probe of ``unit(1)`` and wait for its decision."""
        req = auth_pb2.VerifyRequest(subject_id=subject, probe=emb(unit(1)))
        self.probes.put(auth_pb2.AuthProbe(verify=self.client.signed("Verify", req), sequence=seq))
        return next(self.call)

    def close(self) -> None:
        self.call.cancel()


def _restart(site: Site, **changes) -> Site:
    site.cfg = dataclasses.replace(site.cfg, **changes)
    site.restart()
    return site


@pytest.fixture
def site(tmp_path: Path):
    s = Site(tmp_path / "kfaar.db")  # four workers: at most two streams at once
    yield s
    s.stop()


def _refused(streams: list[Stream], n: int, wait_s: float = 5.0) -> list[Stream]:
    """Wait until ``n`` of the streams have ended; return the ones that ended."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and sum(s.call.done() for s in streams) < n:
        time.sleep(0.02)
    return [s for s in streams if s.call.done()]


def test_idle_streams_from_one_device_do_not_freeze_everyone_else(site: Site) -> None:
    # Before the limit: four idle streams (one per worker thread) left every other call
    # waiting; an honest Verify ran into its 10 s deadline.
    honest = site.client("door-2")
    honest.enroll("alice", unit(1))
    thief = site.client("cam-stolen")
    streams = [Stream(thief) for _ in range(4)]
    try:
        assert honest.verify("alice", unit(1))  # DEADLINE_EXCEEDED before the limit
        ended = _refused(streams, 2)
        assert len(ended) == 2  # two of the four workers may stream, the rest stay free
        for s in ended:
            assert s.call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-streams" in s.call.details()
        open_ = [s for s in streams if s not in ended]
        assert open_[0].verify("bob").error_message == "unknown subject 'bob'"  # still served
    finally:
        for s in streams:
            s.close()


def test_one_token_holds_at_most_its_streams_and_gets_them_back(site: Site) -> None:
    _restart(site, workers=8, limits=ResourceLimits(streams_per_token=2))  # 4 in all
    thief, honest = site.client("cam-stolen"), site.client("door-2")
    thief.enroll("alice", unit(1))
    mine = [Stream(thief) for _ in range(3)]
    try:
        (refused,) = _refused(mine, 1)
        assert refused.call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-streams-per-token" in refused.call.details()
        theirs = Stream(honest)  # another token of the scope still streams
        assert theirs.verify("bob").error_message == "unknown subject 'bob'"
        theirs.close()
    finally:
        for s in mine:
            s.close()
    for _ in range(3):  # closed streams give their slots back: a camera may reconnect
        again = [_served_stream(thief) for _ in range(2)]
        for s in again:
            s.close()


def _served_stream(client: Client, wait_s: float = 5.0) -> Stream:
    """Open a stream and wait until it decides a probe (a cancelled one's slot comes back
    once the server sees the cancellation)."""
    deadline = time.monotonic() + wait_s
    while True:
        stream = Stream(client)
        try:
            assert stream.verify("alice").verify.match  # decided on a held slot
            return stream
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def test_an_honest_stream_decides_every_probe(site: Site) -> None:
    door = site.client("door-1")
    door.enroll("alice", unit(1))
    stream = Stream(door)
    try:
        for seq in range(1, 31):  # a camera's probes of one visit, all on one stream
            out = stream.verify("alice", seq)
            assert out.sequence == seq and out.verify.match
    finally:
        stream.close()


def _audit_bytes(site: Site) -> int:
    return sum(len(str(r)) for r in site.running.store.audit_rows())


def _no_liveness(client: Client, method: str) -> grpc.RpcError:
    req = auth_pb2.VerifyRequest(subject_id="alice", probe=emb(unit(1)))
    req.liveness.method, req.liveness.passed = method, True
    with pytest.raises(grpc.RpcError) as exc:
        client.call("Verify", req)
    return exc.value


def test_refused_liveness_cannot_fill_the_audit_log(site: Site) -> None:
    # Before: every refusal wrote its own row, outside the one-row-a-second aggregation and
    # charged to no guess budget, quoting the device's method name whole. 100 calls from
    # one device in a blink: past the call rate (tests/test_call_rate.py), so made roomy.
    _restart(site, liveness=LivenessPolicy(frozenset({"hq"})), limits=ROOMY_RATE)
    thief = site.client("cam-stolen", "hq")
    rows, size = len(site.running.store.audit_rows()), _audit_bytes(site)
    refused = [_no_liveness(thief, "x" * 4000) for _ in range(100)]
    assert {exc.code() for exc in refused} == {grpc.StatusCode.FAILED_PRECONDITION}
    added = site.running.store.audit_rows()[rows:]
    assert len(added) <= 3 and _audit_bytes(site) - size < 3000  # before: 100 rows, 400 KB
    assert "unknown liveness method 'xxx" in refused[-1].details()
    assert len(refused[-1].details()) < 200  # before: the 4,000 characters quoted back
    site.running.refusals.flush()  # the counted ones: every refusal is still accounted for
    assert sum(r[7] for r in site.running.store.audit_rows()[rows:]) == 100


def test_a_huge_liveness_method_gets_a_short_clear_refusal(site: Site) -> None:
    # Before: the 500 KB method came back quoted in the status details, too big for the
    # client's metadata limit (RESOURCE_EXHAUSTED instead of the reason), and was audited.
    _restart(site, liveness=LivenessPolicy(frozenset({"hq"})))
    thief = site.client("cam-stolen", "hq")
    size = _audit_bytes(site)
    exc = _no_liveness(thief, "x" * 500_000)
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert exc.details().endswith("'...") and len(exc.details()) < 200
    assert _audit_bytes(site) - size < 1000


def test_a_liveness_refusal_is_audited_once_with_its_reason(site: Site) -> None:
    _restart(site, liveness=LivenessPolicy(frozenset({"hq"})))
    door = site.client("door-hq", "hq")
    rows = len(site.running.store.audit_rows())
    req = auth_pb2.VerifyRequest(subject_id="alice", probe=emb(unit(1)))
    assert code(lambda: door.call("Verify", req)) == grpc.StatusCode.FAILED_PRECONDITION
    site.running.refusals.flush()
    (row,) = site.running.store.audit_rows()[rows:]
    assert row[6] == "refused: liveness: no liveness evidence" and row[7] == 1


def test_a_long_repeated_known_method_is_cut_short_too(site: Site) -> None:
    _restart(site, liveness=LivenessPolicy(frozenset({"hq"})))
    thief = site.client("cam-stolen", "hq")
    req = auth_pb2.VerifyRequest(subject_id="alice", probe=emb(unit(1)))
    req.liveness.method = "+".join(["passive-minifasnet"] * 20_000)  # every part is known
    with pytest.raises(grpc.RpcError) as caught:
        thief.call("Verify", req)
    exc = caught.value
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION and len(exc.details()) < 200


def test_a_huge_unknown_device_id_is_refused_as_unauthenticated(site: Site) -> None:
    # Before: the id came back whole in the details; past the client's metadata limit, the
    # caller saw RESOURCE_EXHAUSTED ("metadata size exceeds hard limit") and no reason.
    thief = site.client("cam-stolen")
    req = auth_pb2.VerifyRequest(subject_id="alice", probe=emb(unit(1)))
    bogus = auth_pb2.DeviceProof(device_id="d" * 200_000, nonce=b"n" * 16, signature=b"s" * 64)
    req.proof.CopyFrom(bogus)
    with pytest.raises(grpc.RpcError) as caught:
        thief.call("Verify", req, signed=False)
    exc = caught.value
    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "unknown device 'ddd" in exc.details() and len(exc.details()) < 200


@pytest.fixture
def quota_site(tmp_path: Path):
    s = Site(tmp_path / "kfaar.db")
    _restart(s, limits=ResourceLimits(subjects_per_app=20))
    yield s
    s.stop()


def test_one_app_enrolls_at_most_its_quota_of_subjects(quota_site: Site) -> None:
    # Before: one device enrolled 5,000 made-up subjects in 8 s, none refused.
    thief = quota_site.client("kiosk-stolen")
    for i in range(20):
        thief.enroll(f"fake-{i}", unit(i))
    with pytest.raises(grpc.RpcError) as exc:
        thief.enroll("fake-20", unit(20))
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "holds 20 enrolled subjects" in exc.value.details()
    assert "--max-subjects-per-app" in exc.value.details()
    assert quota_site.running.store.subject_templates("default\x1ffake-20")[0] == []


def test_the_quota_keeps_honest_enrolment_working(quota_site: Site) -> None:
    station = quota_site.client("kiosk-1")
    for i in range(20):
        station.enroll(f"p-{i}", unit(i))
    assert station.enroll("p-3", unit(100)).templates_stored == 1  # more templates: no quota
    revoke = auth_pb2.RevokeRequest(subject_id="p-3")
    quota_site.as_admin(station).call("Revoke", revoke)  # a subject gone frees its place
    assert station.enroll("p-new", unit(21)).subject_id == "p-new"
    other = quota_site.client("kiosk-2")  # the quota is per app, not per scope
    assert other.enroll("q-0", unit(40)).templates_stored == 1
    admin = quota_site.as_admin(station)  # the admin token is not limited
    assert admin.enroll("by-admin", unit(41)).templates_stored == 1


def _racing_enrolls(clients: list[Client], calls: int = 24) -> int:
    """Enroll ``calls`` new subjects at once, spread over ``clients``; return how many stuck."""

    def one(i: int) -> bool:
        try:
            return clients[i % len(clients)].enroll(f"fake-{i}", unit(i)).templates_stored == 1
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.details()
            return False

    with ThreadPoolExecutor(calls) as pool:
        return sum(pool.map(one, range(calls)))


def test_enrolls_at_once_do_not_pass_the_quota_together(site: Site) -> None:
    _restart(site, workers=8, limits=ResourceLimits(subjects_per_app=5))
    assert _racing_enrolls([site.client("kiosk-stolen")]) == 5


def test_the_quota_holds_over_two_replicas_on_postgresql(tmp_path: Path, postgres_url: str):
    a, b = (Site(tmp_path / f"unused-{i}.db", postgres_url, workers=8) for i in range(2))
    try:
        for s in (a, b):
            _restart(s, limits=ResourceLimits(subjects_per_app=5))
        on_a = a.client("kiosk-stolen")
        on_b = Client(b.running.port, on_a.token, on_a.device, on_a.key)  # the same app on B
        assert _racing_enrolls([on_a, on_b]) == 5  # the owner lock: claims counted in turn
    finally:
        for s in (a, b):
            s.stop()
            s.running.store.close()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-streams-per-token", "0"], "--max-streams-per-token must be at least 1"),
        (["--max-streams", "0"], "--max-streams must be at least 1"),
        (["--max-subjects-per-app", "0"], "--max-subjects-per-app must be at least 1"),
        (["--workers", "1"], "--workers must be at least 2"),
    ],
)
def test_a_bad_limit_is_a_usage_error(tmp_path: Path, capsys, argv, message) -> None:
    db = ["--db", str(tmp_path / "x.db"), "--insecure"]
    assert main(["serve", *db, *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_limits_read_the_environment_and_show_in_help(monkeypatch, capsys) -> None:
    monkeypatch.setenv("KFAAR_MAX_SUBJECTS_PER_APP", "7")
    monkeypatch.setenv("KFAAR_MAX_STREAMS", "3")
    monkeypatch.setenv("KFAAR_MAX_STREAMS_PER_TOKEN", "2")
    monkeypatch.setenv("KFAAR_WORKERS", "9")
    args = build_parser().parse_args(["serve", "--insecure"])
    assert limits_from_args(args) == (9, ResourceLimits(2, 3, 7))
    assert ResourceLimits(2, 3, 7).total_streams(9) == 3
    assert ResourceLimits().total_streams(16) == 8 and ResourceLimits(1, 50).total_streams(4) == 3
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--max-streams-per-token", "--max-subjects-per-app", "$KFAAR_MAX_STREAMS"):
        assert flag in out
