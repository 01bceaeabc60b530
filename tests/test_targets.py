"""``--server`` parsing: lists, DNS names and addresses become one balanced gRPC target."""

from __future__ import annotations

import pytest

from auth_service.targets import replica_targets, resolve_target


def _resolver(table: dict[str, list[str]]):
    return lambda host, port: table[host]


@pytest.mark.parametrize(
    ("servers", "target", "authority"),
    [
        ("10.0.0.1:50051", "ipv4:10.0.0.1:50051", "10.0.0.1:50051"),
        ("10.0.0.1:1,10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2", "10.0.0.1:1"),
        ("[::1]:1, [fd00::2]:2", "ipv6:[::1]:1,[fd00::2]:2", "[::1]:1"),
        ("kfaar.svc:50051", "dns:///kfaar.svc:50051", None),
        ("dns:///kfaar.svc:50051", "dns:///kfaar.svc:50051", None),
        ("a.svc:1,b.svc:1", "ipv4:10.0.0.1:1,10.0.0.2:1,10.0.0.3:1", "a.svc:1"),
        ("10.0.0.9:1,a.svc:1", "ipv4:10.0.0.9:1,10.0.0.1:1,10.0.0.2:1", "a.svc:1"),
        ("localhost:1,localhost:2", "ipv4:127.0.0.1:1,127.0.0.1:2", "localhost:1"),
        ("v6.svc:1,v6.svc:2", "ipv6:[fd00::6]:1,[fd00::6]:2", "v6.svc:1"),
    ],
)
def test_servers_become_one_balanced_target(servers: str, target: str, authority) -> None:
    table = {
        "a.svc": ["10.0.0.1", "10.0.0.2"],
        "b.svc": ["10.0.0.2", "10.0.0.3"],  # shared addresses are used once
        "localhost": ["::1", "127.0.0.1"],  # both families: IPv4, which 0.0.0.0 serves
        "v6.svc": ["fd00::6"],
    }
    found = resolve_target(servers, _resolver(table))
    assert (found.target, found.authority) == (target, authority)


def test_health_expands_lists_and_dns_names_into_replicas() -> None:
    dns = _resolver({"a.svc": ["10.0.0.1", "10.0.0.2"], "pods.svc": ["10.1.0.1", "10.1.0.2"]})
    found = [(t.target, t.authority) for t in replica_targets("a.svc:1,10.0.0.3:2", dns)]
    assert found == [
        ("ipv4:10.0.0.1:1", "a.svc:1"),
        ("ipv4:10.0.0.2:1", "a.svc:1"),
        ("ipv4:10.0.0.3:2", "a.svc:1"),
    ]
    found = [(t.target, t.authority) for t in replica_targets("dns:///pods.svc:5", dns)]
    assert found == [("ipv4:10.1.0.1:5", "pods.svc:5"), ("ipv4:10.1.0.2:5", "pods.svc:5")]
    # One name stays one check, as a probe's localhost:50051 always was.
    assert [t.target for t in replica_targets("a.svc:1", dns)] == ["dns:///a.svc:1"]


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ("", "no server given"),
        ("a:1,,b:2", "entry 2 is empty"),
        ("a:1,", "entry 2 is empty"),
        ("kfaar-serve", "missing port"),
        ("dns:///kfaar-serve", "missing port"),
        ("dns:///a:1,b:1", "a dns: target names one name"),
        ("kfaar-serve:http", "port must be a number"),
        ("kfaar-serve:70000", "port must be a number"),
        ("::1:50051", "put an IPv6 address in brackets"),
        ("a:1;b:2", "expected host:port (separate servers by commas)"),
        ("[10.0.0.1]:1", "only IPv6 addresses go in brackets"),
        ("ipv4:kfaar-serve:1", "not an IPv4 address"),
        ("10.0.0.1:1,[::1]:2", "mixes IPv4 and IPv6"),
        ("bad host!:1", "not a hostname or address"),
        ("10.0.0.1:1,v6.svc:2", "has no IPv4 address"),
    ],
)
def test_a_bad_server_list_is_a_clear_error(servers: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_target(servers, _resolver({"v6.svc": ["fd00::6"]}))
