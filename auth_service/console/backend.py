"""The console's only way to change anything: AdminService calls, naming the operator."""

from __future__ import annotations

import argparse

import grpc

from auth_service.admin import OPERATOR_METADATA
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc


class ActionError(Exception):
    """The service refused an action: its status and message, for the operator."""


class Admin:
    """AdminService over the same connection flags as ``kfaar admin``."""

    def __init__(self, args: argparse.Namespace, admin_token: str, timeout_s: float = 10.0):
        from auth_service.admin_cli import connect

        self.channel = connect(args)
        self.stub = auth_pb2_grpc.AdminServiceStub(self.channel)
        self.token, self.timeout_s = admin_token, timeout_s
        self.args = args

    def health(self, timeout_s: float = 2.0) -> list[tuple[str, str, str]]:
        """Ask every replica --server names for its health: (replica, status, why)."""
        from concurrent.futures import ThreadPoolExecutor

        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from auth_service.admin_cli import _credentials
        from auth_service.targets import channel_options, dial, replica_targets

        creds = _credentials(self.args)
        try:
            replicas = replica_targets(self.args.server)
        except (ValueError, OSError) as exc:
            return [(self.args.server, "UNRESOLVED", str(exc))]

        def check(target) -> tuple[str, str, str]:
            label = target.target.rpartition("/")[2]
            # One address per channel and no balancing: this asks that replica only.
            with dial(target.target, creds, channel_options(target, balanced=False)) as ch:
                try:
                    reply, call = health_pb2_grpc.HealthStub(ch).Check.with_call(
                        health_pb2.HealthCheckRequest(), timeout=timeout_s
                    )
                except grpc.RpcError as exc:
                    return label, exc.code().name, exc.details() or ""
            why = dict(call.trailing_metadata() or ()).get("kfaar-health-reason", "")
            return label, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status), why

        with ThreadPoolExecutor(max_workers=min(16, len(replicas) or 1)) as pool:
            return list(pool.map(check, replicas))

    def _call(self, name: str, request, operator: str):
        meta = (("authorization", f"Bearer {self.token}"), (OPERATOR_METADATA, operator))
        try:
            return getattr(self.stub, name)(request, metadata=meta, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise ActionError(f"{exc.code().name}: {exc.details()}") from None

    def register_device(self, operator: str, device: str, key_hex: str, scope: str) -> None:
        try:
            key = bytes.fromhex(key_hex.strip())
        except ValueError:
            raise ActionError("the verify key must be hex (kfaar keys export-public)") from None
        req = auth_pb2.RegisterDeviceRequest(device_id=device, verify_key=key, scope=scope)
        self._call("RegisterDevice", req, operator)

    def unregister_device(self, operator: str, device: str) -> None:
        self._call("UnregisterDevice", auth_pb2.UnregisterDeviceRequest(device_id=device), operator)

    def create_token(
        self,
        operator: str,
        app: str,
        scope: str,
        devices: list[str],
        methods: list[str],
        shared: bool = False,
    ) -> str:
        req = auth_pb2.CreateAppTokenRequest(
            app_name=app, scope=scope, device_ids=devices, methods=methods
        )
        if shared:  # a field of newer services only: set it only when asked for
            req.shared = True
        return self._call("CreateAppToken", req, operator).token

    def revoke_token(self, operator: str, app: str) -> None:
        self._call("RevokeAppToken", auth_pb2.RevokeAppTokenRequest(app_name=app), operator)

    def clear_budget(self, operator: str, key: str) -> None:
        req = auth_pb2.ClearGuessBudgetRequest(budget_key=key)
        self._call("ClearGuessBudget", req, operator)

    def close(self) -> None:
        self.channel.close()
