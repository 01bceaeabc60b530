"""AdminService: register devices in a scope, issue scoped tokens bound to devices."""

from __future__ import annotations

import secrets
import time

import grpc

from auth_service.authz import check_methods, check_scope
from auth_service.interceptor import token_hash
from auth_service.store import TemplateStore
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc


def _printable(name: str, what: str, context: grpc.ServicerContext) -> str:
    if not 1 <= len(name) <= 128 or not name.isprintable():
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what} must be 1-128 printable")
    return name


# Metadata naming the person behind an admin call (set by ``kfaar console``); trusted as
# far as the admin token that must accompany it.
OPERATOR_METADATA = "kfaar-operator"
BUDGET_KINDS = ("device", "token", "subject", "pair")


def _actor(context: grpc.ServicerContext) -> str | None:
    """Return ``operator:NAME`` for the audit row when the call names its operator."""
    for key, value in context.invocation_metadata() or ():
        if key == OPERATOR_METADATA and 1 <= len(value) <= 64 and value.isprintable():
            return f"operator:{value}"
    return None


class AdminServicer(auth_pb2_grpc.AdminServiceServicer):
    def __init__(self, store: TemplateStore) -> None:
        self.store = store

    def RegisterDevice(self, request, context):
        if not request.device_id or len(request.verify_key) != 32:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "need a device_id and a 32-byte Ed25519 key"
            )
        device = _printable(request.device_id, "device_id", context)
        try:
            scope = check_scope(request.scope)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if len(request.cert_sha256) not in (0, 32):  # 32 bytes: room for a digest, nothing more
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "cert_sha256 must be the 32-byte SHA-256 of the client certificate (or empty)",
            )
        self.store.put_device(device, request.verify_key, scope)
        self.store.set_single_view(device, request.single_view)
        self.store.set_device_cert(device, request.cert_sha256 or None)
        single = " (single-view)" if request.single_view else ""
        if request.cert_sha256:  # a fingerprint of a public certificate: no secret
            single += f" (client certificate sha256 {request.cert_sha256.hex()[:16]}...)"
        what = f"{device} in scope {scope}{single}"
        self.store.audit(_actor(context), "RegisterDevice", None, what)
        return auth_pb2.RegisterDeviceReply()

    def UnregisterDevice(self, request, context):
        if not self.store.remove_device(request.device_id):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown device {request.device_id!r}")
        self.store.audit(_actor(context), "UnregisterDevice", None, request.device_id)
        self.store.seal()  # a rollback must not bring the device back
        return auth_pb2.UnregisterDeviceReply()

    def CreateAppToken(self, request, context):
        if not request.app_name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "need an app_name")
        app = _printable(request.app_name, "app_name", context)
        devices = tuple(_printable(d, "device_ids", context) for d in request.device_ids)
        try:
            scope = check_scope(request.scope)
            methods = check_methods(request.methods)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if request.shared and devices:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "a shared token is for every device of its scope: give device_ids or shared",
            )
        token = secrets.token_urlsafe(32)
        self.store.put_token(
            app, token_hash(token), scope, devices, tuple(sorted(methods)), request.shared
        )
        what = f"{app} in scope {scope}: {', '.join(sorted(methods))}"
        if devices:
            what += f" on {', '.join(devices)}"
        else:
            what += " shared by the scope" if request.shared else " bound on first use"
        self.store.audit(_actor(context), "CreateAppToken", None, what)
        return auth_pb2.CreateAppTokenReply(token=token)

    def RevokeAppToken(self, request, context):
        if not self.store.remove_token(request.app_name):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown app {request.app_name!r}")
        self.store.audit(_actor(context), "RevokeAppToken", None, request.app_name)
        self.store.seal()  # a rollback must not bring the token back
        return auth_pb2.RevokeAppTokenReply()

    def ClearGuessBudget(self, request, context):
        key = request.budget_key
        if key.partition("\x1f")[0] not in BUDGET_KINDS or len(key) > 512:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not a guess budget key")
        now = time.time()

        def clear(rows: dict) -> tuple[dict, bool]:
            return ({key: (0.0, now)}, True) if key in rows else ({}, False)

        if not self.store.update_budgets([key], clear):
            context.abort(grpc.StatusCode.NOT_FOUND, "no such guess budget")
        self.store.audit(_actor(context), "ClearGuessBudget", None, key.replace("\x1f", "/"))
        return auth_pb2.ClearGuessBudgetReply()
