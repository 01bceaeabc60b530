"""``kfaar admin``: register scoped devices and issue scoped, device-bound app tokens."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def env(name: str, default: str | None = None) -> str | None:
    """Return a deployment setting from the environment."""
    return os.environ.get(name, default)


def add_connection_args(p: argparse.ArgumentParser) -> None:
    """Add --server and the client TLS files, as the edge agent reads them."""
    p.add_argument(
        "--server",
        default=env("KFAAR_SERVER", f"127.0.0.1:{env('KFAAR_PORT', '50051')}"),
        help="host:port, a list host1:port,host2:port or dns:///name:port; calls are "
        "spread round-robin over the replicas that report SERVING. With TLS, every "
        "replica's certificate must name the first hostname given ($KFAAR_SERVER, else "
        "127.0.0.1:$KFAAR_PORT)",
    )
    p.add_argument("--ca", type=Path, default=env("KFAAR_TLS_CA"), help="$KFAAR_TLS_CA")
    p.add_argument(
        "--cert", type=Path, default=env("KFAAR_TLS_CLIENT_CERT"), help="$KFAAR_TLS_CLIENT_CERT"
    )
    p.add_argument(
        "--key", type=Path, default=env("KFAAR_TLS_CLIENT_KEY"), help="$KFAAR_TLS_CLIENT_KEY"
    )


def _credentials(args: argparse.Namespace):
    """Return TLS credentials from --ca, --cert and --key (None: plaintext)."""
    from auth_service.targets import credentials

    for name in ("ca", "cert", "key"):
        path = getattr(args, name)
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"--{name}: no file at {path}")
    return credentials(args.ca, args.cert, args.key)


def connect(args: argparse.Namespace):
    """Open a channel over every replica --server names: plaintext without --ca, else TLS."""
    from auth_service.targets import channel_options, dial, resolve_target

    creds = _credentials(args)
    target = resolve_target(args.server)  # a malformed --server raises ValueError: exit 2
    return dial(target.target, creds, channel_options(target))


def check_health(args: argparse.Namespace) -> int:
    """Ask each replica --server names for its health; print one line each; 0 if all serve."""
    from concurrent.futures import ThreadPoolExecutor

    from auth_service.targets import channel_options, dial, replica_targets

    creds = _credentials(args)
    replicas = replica_targets(args.server)
    if not replicas:
        raise ValueError(f"--server {args.server}: the name resolves to no address")
    single = len(replicas) == 1 and "," not in args.server

    def check(target) -> tuple[bool, str, bool]:
        """Return (serving, the line to print, whether it is an error)."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        label = args.server if single else target.target.partition(":")[2]
        # One address per channel and no balancing: this asks that replica, nobody else.
        with dial(target.target, creds, channel_options(target, balanced=False)) as channel:
            try:
                reply, call = health_pb2_grpc.HealthStub(channel).Check.with_call(
                    health_pb2.HealthCheckRequest(), timeout=args.timeout
                )
            except grpc.RpcError as exc:
                return False, f"{label}: not healthy: {exc.code().name}: {exc.details()}", True
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        # The service says why it does not serve (auth_service/health.py), e.g. a failed
        # integrity check of its store.
        said = dict(call.trailing_metadata() or ())
        why = said.get("kfaar-health-reason")
        line = f"{label}: {status}" + (f" ({why})" if why else "")
        if said.get("kfaar-health-warning"):  # serving, but e.g. from an unsigned store
            line += f" [warning: {said['kfaar-health-warning']}]"
        return reply.status == health_pb2.HealthCheckResponse.SERVING, line, False

    with ThreadPoolExecutor(max_workers=min(16, len(replicas))) as pool:
        results = list(pool.map(check, replicas))  # in parallel: one --timeout for all
    for _, line, error in results:
        (sys.stderr if error else sys.stdout).write(line + "\n")
    serving = sum(ok for ok, _, _ in results)
    if not single:
        sys.stdout.write(f"{serving} of {len(results)} replicas serving\n")
    return 0 if serving == len(results) else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "admin",
        help="register devices and issue app tokens (AdminService)",
        description="Call the service's AdminService with the admin token. Devices act only "
        "on the subjects of their scope; tokens work only with devices of their scope, "
        "only on the devices named (a token without devices binds to the first device "
        "that uses it, unless --shared), and only for the methods granted (default Verify "
        "and Identify; Enroll, Rekey and Revoke must be granted by name). A subject "
        "belongs to the app that enrolled it. "
        "See docs/SECURITY.md.",
    )
    add_connection_args(p)
    p.add_argument(
        "--admin-token-file",
        type=Path,
        default=env("KFAAR_ADMIN_TOKEN_FILE"),
        help="file holding the admin bearer token ($KFAAR_ADMIN_TOKEN_FILE)",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    reg = actions.add_parser("register-device", help="register (or move) a device's verify key")
    reg.add_argument("device_id")
    reg.add_argument("verify_key", help="hex, as printed by `kfaar keys export-public`")
    reg.add_argument("--scope", default="", help="site or tenant (default: default)")
    reg.add_argument(
        "--single-view",
        action="store_true",
        help="the device never fuses frames: decide its probes at the single-frame threshold "
        "(others: the stricter fused one, whatever they declare) and refuse fused ones",
    )
    reg.add_argument(
        "--client-cert",
        type=Path,
        metavar="PEM",
        help="bind the device to this TLS client certificate (its SHA-256 is stored): its "
        "calls are then refused unless they arrive over mTLS with exactly this certificate",
    )
    unreg = actions.add_parser("unregister-device", help="forget a device (a lost camera)")
    unreg.add_argument("device_id")
    tok = actions.add_parser("create-token", help="issue an app token; printed once")
    tok.add_argument("app_name")
    tok.add_argument("--scope", default="", help="site or tenant (default: default)")
    tok.add_argument(
        "--device", action="append", default=[], help="bind to this device (repeatable)"
    )
    tok.add_argument(
        "--method",
        action="append",
        default=[],
        help="allow this AuthService method (repeatable; default Verify and Identify: "
        "Enroll, Rekey and Revoke must be granted by name)",
    )
    tok.add_argument(
        "--shared",
        action="store_true",
        help="one token for every device of the scope (opt-in; without --device and without "
        "this, the token binds to the first device that uses it)",
    )
    rev = actions.add_parser("revoke-token", help="revoke an app's token")
    rev.add_argument("app_name")
    gk = actions.add_parser(
        "grant-key",
        help="print the public key door controllers verify access grants with",
        description="Derive the access-grant verify key from the service key file (no call "
        "to the service, no admin token) and print it, hex by default, for door controllers "
        "(deploy/door_controller/). Every replica sharing the service key signs grants this "
        "one key verifies. The key id grants name goes to standard error.",
    )
    gk.add_argument(
        "--service-key-file",
        type=Path,
        default=env("KFAAR_SERVICE_KEY_FILE"),
        help="the service key ($KFAAR_SERVICE_KEY_FILE; a SQLite store's is DB.key next to it)",
    )
    gk.add_argument("--base64", action="store_true", help="print base64 instead of hex")
    p.set_defaults(handler=_admin)


def cert_fingerprint(path: Path) -> bytes:
    """Return the SHA-256 of a PEM certificate's DER encoding, or raise ValueError."""
    import hashlib
    import ssl

    try:
        der = ssl.PEM_cert_to_DER_cert(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"--client-cert {path}: not a readable PEM certificate ({exc})") from None
    return hashlib.sha256(der).digest()


def _grant_key(args: argparse.Namespace) -> int:
    """Print the access-grant verify key derived from the service key file."""
    import base64

    from auth_service import service_key
    from auth_service.access_grant import key_id

    if args.service_key_file is None:
        raise ValueError(
            "--service-key-file (or $KFAAR_SERVICE_KEY_FILE): the service key, e.g. the "
            "DB.key next to a SQLite store"
        )
    try:
        vk = service_key.load(Path(args.service_key_file)).grant_verify_key
    except service_key.ServiceKeyError as exc:
        raise ValueError(str(exc)) from None
    sys.stdout.write((base64.b64encode(vk).decode() if args.base64 else vk.hex()) + "\n")
    sys.stderr.write(f"grant key id {key_id(vk)}\n")
    return 0


def _admin(args: argparse.Namespace) -> int:
    from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc

    if args.action == "grant-key":  # read from the key file: no token, no connection
        return _grant_key(args)
    if args.admin_token_file is None or not Path(args.admin_token_file).is_file():
        raise FileNotFoundError("--admin-token-file (or $KFAAR_ADMIN_TOKEN_FILE) must name a file")
    meta = (("authorization", f"Bearer {Path(args.admin_token_file).read_text().strip()}"),)
    with connect(args) as channel:
        admin = auth_pb2_grpc.AdminServiceStub(channel)
        if args.action == "register-device":
            try:
                key = bytes.fromhex(args.verify_key)
            except ValueError:
                raise ValueError("verify_key must be hex (kfaar keys export-public)") from None
            req = auth_pb2.RegisterDeviceRequest(
                device_id=args.device_id,
                verify_key=key,
                scope=args.scope,
                single_view=args.single_view,
                cert_sha256=cert_fingerprint(args.client_cert) if args.client_cert else b"",
            )
            admin.RegisterDevice(req, metadata=meta, timeout=10)
            sys.stdout.write(f"registered {args.device_id} in scope {args.scope or 'default'}\n")
        elif args.action == "unregister-device":
            req = auth_pb2.UnregisterDeviceRequest(device_id=args.device_id)
            admin.UnregisterDevice(req, metadata=meta, timeout=10)
            sys.stdout.write(f"unregistered {args.device_id}\n")
        elif args.action == "create-token":
            req = auth_pb2.CreateAppTokenRequest(
                app_name=args.app_name,
                scope=args.scope,
                device_ids=args.device,
                methods=args.method,
                shared=args.shared,
            )
            sys.stdout.write(f"{admin.CreateAppToken(req, metadata=meta, timeout=10).token}\n")
        else:
            req = auth_pb2.RevokeAppTokenRequest(app_name=args.app_name)
            admin.RevokeAppToken(req, metadata=meta, timeout=10)
            sys.stdout.write(f"revoked the token of {args.app_name}\n")
    return 0
