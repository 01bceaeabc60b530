"""Client-side load balancing: turn ``--server`` into a target gRPC itself spreads over replicas.

``--server`` takes one address (``host:port``), a list (``host1:port,host2:port``) or a DNS
name (``dns:///kfaar-serve.kfaar.svc:50051``). gRPC's resolver turns the target into
addresses, ``round_robin`` spreads calls over every one of them, and client-side health
checking (each replica's grpc.health.v1 Watch) takes a replica that reports NOT_SERVING,
such as one draining on SIGTERM, out of the rotation before it closes.

Retries. AuthService requests are signed with a fresh nonce per attempt, and every replica
spends nonces in the shared store, so a gRPC ``retryPolicy`` (which re-sends the same
bytes) would be refused as a replay whenever the first attempt reached a replica. The edge
client's own loop re-signs each attempt instead, and round_robin sends it to the next
replica; the replies cache makes a re-signed write apply once. So the service config holds
no retryPolicy for AuthService, and one retry layer means no retry storm. gRPC's transparent
retries (on by default) stay: they only re-send a call no server application has seen.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

Resolver = Callable[[str, int], list[str]]

ADMIN = "kfaar.v1.AdminService"
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    # "" is the whole server's health: SERVING once started, NOT_SERVING while draining.
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [
        {
            # Unsigned and safe to repeat: a repeated RegisterDevice stores the same key; a
            # repeated CreateAppToken replaces a token nobody received. UnregisterDevice and
            # RevokeAppToken are left out: a repeat after a lost reply says NOT_FOUND for a
            # removal that did happen. AuthService is left out (see the module docstring).
            "name": [
                {"service": ADMIN, "method": "RegisterDevice"},
                {"service": ADMIN, "method": "CreateAppToken"},
            ],
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.2s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
    # Stop retrying while most calls fail (a whole outage), rather than multiply the load.
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
}

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]*)(\.[A-Za-z0-9_-]+)*\.?$")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Endpoint:
    host: str  # a hostname, or an IP address without brackets
    port: int

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """Return the address if ``host`` is an IP literal, else None."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Target:
    target: str  # what grpc.insecure_channel / secure_channel get
    authority: str | None  # grpc.default_authority: the name TLS checks certificates against
    addresses: tuple[str, ...] = ()  # resolved here (lists only): one target per replica


def parse_endpoint(text: str, spec: str) -> Endpoint:
    """Parse ``host:port`` or ``[ipv6]:port``; raise ValueError naming ``spec`` if malformed."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"server {text!r} in {spec!r}: write [IPv6]:PORT")
    else:
        if text.count(":") > 1:
            bare = text.rpartition(":")[0]
            why = "put an IPv6 address in brackets" if _is_ip(bare) else "expected host:port"
            raise ValueError(f"server {text!r} in {spec!r}: {why} (separate servers by commas)")
        host, sep, port = text.partition(":")
        if not sep:
            raise ValueError(f"server {text!r} in {spec!r}: missing port (host:port)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"server {text!r} in {spec!r}: the port must be a number 1-65535")
    endpoint = Endpoint(host, int(port))
    if endpoint.ip is None and not _HOSTNAME.match(host):
        raise ValueError(f"server {text!r} in {spec!r}: {host!r} is not a hostname or address")
    if text.startswith("[") and not isinstance(endpoint.ip, ipaddress.IPv6Address):
        raise ValueError(f"server {text!r} in {spec!r}: only IPv6 addresses go in brackets")
    return endpoint


def parse_servers(spec: str) -> list[Endpoint]:
    """Parse a comma-separated list of ``host:port`` entries (``ipv4:``/``ipv6:`` allowed)."""
    body, version = spec.strip(), None
    for scheme in ("ipv4:", "ipv6:"):
        if body.startswith(scheme):
            body, version = body[len(scheme) :], int(scheme[3])
    if not body:
        raise ValueError("no server given: expected host:port[,host:port...]")
    entries = [e.strip() for e in body.split(",")]
    for i, entry in enumerate(entries, start=1):
        if not entry:
            raise ValueError(f"server list {spec!r}: entry {i} is empty")
    endpoints = [parse_endpoint(e, spec) for e in entries]
    for e in endpoints:
        if version is not None and (e.ip is None or e.ip.version != version):
            raise ValueError(f"server list {spec!r}: {e} is not an IPv{version} address")
    return endpoints


def getaddrinfo_ips(host: str, port: int) -> list[str]:
    """Resolve ``host`` with the system resolver; return its addresses, first seen first."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve server {host!r}: {exc.strerror}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _address_target(ips: list[tuple[str, int]]) -> str:
    """Build an ``ipv4:``/``ipv6:`` target from addresses of one family."""
    if ":" in ips[0][0]:
        return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in ips)
    return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in ips)


def _pick_family(endpoints: list[Endpoint], resolved: dict[Endpoint, list[str]]) -> int:
    """Choose one address family: gRPC's ipv4:/ipv6: targets cannot mix them."""
    literal = {e.ip.version for e in endpoints if e.ip is not None}
    if len(literal) > 1:
        raise ValueError("the server list mixes IPv4 and IPv6 addresses: gRPC takes one family")
    if literal:
        return literal.pop()
    # Names only: prefer IPv4, since `localhost` also resolves to ::1, where a service that
    # listens on 0.0.0.0 does not answer.
    every = [ip for ips in resolved.values() for ip in ips]
    return 4 if any(":" not in ip for ip in every) else 6


def _one_family(ips: list[str], version: int) -> list[str]:
    return [ip for ip in ips if (":" in ip) == (version == 6)]


def _dns_endpoint(spec: str) -> Endpoint:
    """Return the name and port of a ``dns:[//resolver]/name:port`` target."""
    if "," in spec:
        raise ValueError(f"{spec!r}: a dns: target names one name; list servers without dns:")
    return parse_endpoint(spec[len("dns:") :].rpartition("/")[2], spec)


def resolve_target(spec: str, resolve: Resolver = getaddrinfo_ips) -> Target:
    """Turn ``--server`` into a load-balanced gRPC target; raise ValueError if malformed."""
    spec = spec.strip()
    if spec.startswith("unix:"):
        return Target(spec, None)
    if spec.startswith("dns:"):  # dns:///name:port, or dns://resolver/name:port
        _dns_endpoint(spec)
        return Target(spec, None)
    endpoints = parse_servers(spec)
    first_name = next((e for e in endpoints if e.ip is None), None)
    if len(endpoints) == 1 and first_name is not None:
        # One name: gRPC's DNS resolver finds every address behind it (a headless Service
        # returns each ready pod) and re-resolves when a connection fails. Not resolved
        # here, so a client may start before the name exists.
        return Target(f"dns:///{first_name}", None)
    # Several entries: gRPC has no target for several hostnames, so resolve each name here,
    # once, into one address list. A set that changes later needs a DNS name instead.
    resolved = {e: resolve(e.host, e.port) for e in endpoints if e.ip is None}
    version = _pick_family(endpoints, resolved)
    addresses: list[tuple[str, int]] = []
    for e in endpoints:
        mine = [e.host] if e.ip is not None else _one_family(resolved[e], version)
        if not mine:
            raise ValueError(f"server {e} has no IPv{version} address; gRPC cannot mix families")
        addresses += [(ip, e.port) for ip in mine]
    addresses = list(dict.fromkeys(addresses))
    # TLS checks the certificate against the authority. An address-list target has none of
    # its own, so name one: the first hostname given (the service's DNS name, which every
    # replica's certificate must carry), else the first address.
    authority = str(first_name or endpoints[0])
    each = tuple(_address_target([a]) for a in addresses)
    return Target(_address_target(addresses), authority, each)


def replica_targets(spec: str, resolve: Resolver = getaddrinfo_ips) -> list[Target]:
    """Return one single-replica target per address ``spec`` names, for health checks.

    A single ``host:port`` stays one target, checked as before (a probe's localhost may
    also resolve to ::1, where nothing listens); a list or a ``dns:`` name is expanded.
    """
    whole = resolve_target(spec, resolve)
    if whole.addresses:
        return [Target(t, whole.authority) for t in whole.addresses]
    if not spec.strip().startswith("dns:"):
        return [whole]
    endpoint = _dns_endpoint(spec.strip())
    ips = resolve(endpoint.host, endpoint.port)
    ips = _one_family(ips, _pick_family([endpoint], {endpoint: ips}))
    return [Target(_address_target([(ip, endpoint.port)]), str(endpoint)) for ip in ips]


def channel_options(target: Target, balanced: bool = True) -> list[tuple[str, str | int]]:
    """Return the channel options: the service config, and the TLS authority if any."""
    options: list[tuple[str, str | int]] = []
    if balanced:
        options.append(("grpc.service_config", json.dumps(SERVICE_CONFIG)))
    if target.authority is not None:
        options.append(("grpc.default_authority", target.authority))
    return options


def credentials(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials | None:
    """Return TLS credentials (mTLS with ``cert`` and ``key``), or None for plaintext."""
    if ca is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes(),
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None,
    )


def dial(
    target: str,
    creds: grpc.ChannelCredentials | None,
    options: list[tuple[str, str | int]],
) -> grpc.Channel:
    """Open a plaintext channel without ``creds``, a TLS one with them."""
    if creds is None:
        return grpc.insecure_channel(target, options)
    return grpc.secure_channel(target, creds, options)


def open_channel(
    server: str,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    options: list[tuple[str, str | int]] | None = None,
) -> grpc.Channel:
    """Open one channel that round-robins over every replica ``server`` names."""
    target = resolve_target(server)
    options = [*channel_options(target), *(options or [])]
    return dial(target.target, credentials(ca, cert, key), options)
