"""AdminService: register devices in a scope, issue scoped tokens bound to devices."""

from __future__ import annotations

import secrets

import grpc

from auth_service.authz import check_methods, check_scope
from auth_service.interceptor import token_hash
from auth_service.store import TemplateStore
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc


def _printable(name: str, what: str, context: grpc.ServicerContext) -> str:
    if not 1 <= len(name) <= 128 or not name.isprintable():
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what} must be 1-128 printable")
    return name


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
        self.store.put_device(device, request.verify_key, scope)
        self.store.audit(None, "RegisterDevice", None, f"{device} in scope {scope}")
        return auth_pb2.RegisterDeviceReply()

    def UnregisterDevice(self, request, context):
        if not self.store.remove_device(request.device_id):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown device {request.device_id!r}")
        self.store.audit(None, "UnregisterDevice", None, request.device_id)
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
        token = secrets.token_urlsafe(32)
        self.store.put_token(app, token_hash(token), scope, devices, tuple(sorted(methods)))
        what = f"{app} in scope {scope}: {', '.join(sorted(methods))}"
        if devices:
            what += f" on {', '.join(devices)}"
        self.store.audit(None, "CreateAppToken", None, what)
        return auth_pb2.CreateAppTokenReply(token=token)

    def RevokeAppToken(self, request, context):
        if not self.store.remove_token(request.app_name):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown app {request.app_name!r}")
        self.store.audit(None, "RevokeAppToken", None, request.app_name)
        return auth_pb2.RevokeAppTokenReply()
