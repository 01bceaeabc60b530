"""Server-side authentication: app and admin tokens, and device proofs on every request.

Tokens travel as ``authorization: Bearer <token>`` metadata. The service keeps only
BLAKE2b hashes of app tokens (in the store) and of the admin token (in memory). Device
proofs are checked on the deserialized request, so the interceptor wraps each unary
handler; stream probes are checked one by one by the servicer with the same verifier.
Then the token's grant is checked against the device and method (auth_service/authz.py);
a token issued without devices and not shared is bound to the first device that signs
with it. Then the device's call rate is charged (auth_service/limits.py; not the admin
token's calls), after authentication, so only registered devices get a bucket. Every
refusal is audited, at most one row a second per caller (auth_service/refusals.py).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import replace

import grpc
import nacl.encoding
import nacl.hash
import nacl.signing
from google.protobuf.message import Message

from auth_service.authz import (
    ADMIN_GRANT,
    CALLER,
    DEFAULT_METHODS,
    GRANT,
    AuthzError,
    Grant,
    authorize,
)
from auth_service.limits import CallRate, StreamSlots
from auth_service.proof import NonceCache, ProofError, StoredNonces, verify
from auth_service.refusals import RefusalAudit, peer_ip, quoted
from auth_service.store import StoreUnavailable, TemplateStore

log = logging.getLogger(__name__)

AUTH_SERVICE = "/kfaar.v1.AuthService/"
ADMIN_SERVICE = "/kfaar.v1.AdminService/"
# The caller's role for the servicer ("admin" or "app"), set for the duration of a call.
CALLER_ROLE: contextvars.ContextVar[str] = contextvars.ContextVar("kfaar_caller_role", default="")


def token_hash(token: str) -> bytes:
    """Hash a bearer token for storage and comparison."""
    return nacl.hash.blake2b(
        token.encode(), digest_size=32, person=b"kfaar-app-token", encoder=nacl.encoding.RawEncoder
    )


def bearer(metadata: tuple | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return None


class DeviceVerifier:
    """Check a request's device proof against the registered verify key."""

    def __init__(self, store: TemplateStore, nonces: NonceCache | StoredNonces) -> None:
        self.store, self.nonces = store, nonces

    def check(self, method: str, request: Message) -> str:
        """Return the verified device id, or raise ProofError."""
        return self.check_device(method, request)[0]

    def check_device(self, method: str, request: Message) -> tuple[str, str]:
        """Return the verified device id and its scope, or raise ProofError."""
        if not request.HasField("proof") or not request.proof.device_id:
            raise ProofError("missing device proof")
        found = self.store.device(request.proof.device_id)
        if found is None:
            raise ProofError(f"unknown device {quoted(request.proof.device_id)}")
        verify(method, request, nacl.signing.VerifyKey(found[0]), self.nonces)
        return request.proof.device_id, found[1]


def check_channel_cert(store: TemplateStore, device: str, context) -> None:
    """Refuse (ProofError) a device bound to a client certificate calling without it.

    A device registered with ``cert_sha256`` must call over TLS presenting exactly that
    certificate: a stolen device key used from anywhere else, or over plaintext, is refused.
    """
    bound = store.device_cert(device)
    if bound is None:
        return
    pem = (context.auth_context() or {}).get("x509_pem_cert") or [b""]
    presented = b""
    if pem[0]:
        presented = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem[0].decode())).digest()
    if not presented:
        raise ProofError(f"device {device!r} is bound to a client certificate; none was presented")
    if not hmac.compare_digest(presented, bound):
        raise ProofError(f"device {device!r} is bound to another client certificate")


def bind_grant(store: TemplateStore, grant: Grant, device: str, scope: str) -> Grant:
    """Bind an unbound, unshared token to ``device``, its first verified signer."""
    if grant.admin or grant.shared or grant.devices or grant.scope != scope:
        return grant  # nothing to bind (a scope mismatch is refused by authorize)
    return replace(grant, devices=frozenset(store.bind_token(grant.app, device)))


class AuthInterceptor(grpc.ServerInterceptor):
    """Admin token for AdminService; app or admin token plus a device proof for AuthService."""

    def __init__(
        self,
        store: TemplateStore,
        verifier: DeviceVerifier,
        admin_hash: bytes | None,
        refusals: RefusalAudit | None = None,
        streams: StreamSlots | None = None,
        call_rate: CallRate | None = None,
    ):
        self.store, self.verifier, self.admin_hash = store, verifier, admin_hash
        self.refusals = refusals or RefusalAudit(store)
        self.streams, self.call_rate = streams, call_rate

    def _grant(self, metadata: tuple | None) -> Grant | None:
        token = bearer(metadata)
        if token is None:
            return None
        h = token_hash(token)
        if self.admin_hash is not None and hmac.compare_digest(h, self.admin_hash):
            return ADMIN_GRANT
        found = self.store.token_row(h)
        if found is None:
            return None
        app, scope, devices, methods, shared = found
        methods = frozenset(methods) or DEFAULT_METHODS
        return Grant(app, scope, frozenset(devices), methods, shared=shared)

    def bound(self, grant: Grant, device: str, scope: str) -> Grant:
        """Bind an unbound, unshared token to its first device (whose proof was verified)."""
        return bind_grant(self.store, grant, device, scope)

    def refused(self, context, device: str | None, method: str, code, why: str) -> None:
        """Audit a refusal (aggregated per caller) and abort the call with it."""
        caller = device or f"peer {peer_ip(context.peer())}"
        outcome = f"refused: {code.name} ({why})"
        if device is None:
            outcome += f" from {peer_ip(context.peer())}"
        # The refusal stands even when it cannot be recorded; the store's failure is
        # reported on its own (health, logs).
        with contextlib.suppress(StoreUnavailable):
            self.refusals.record(caller, device, method, None, outcome)
        context.abort(code, why)

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = continuation(details)
        method = details.method
        if handler is None or not method.startswith((AUTH_SERVICE, ADMIN_SERVICE)):
            return handler  # health checks and reflection stay open
        if self.store.fault is not None:  # a failed integrity check: serve nothing from it
            why = f"this replica's store failed an integrity check: {self.store.fault}"
            return _refuse(handler, grpc.StatusCode.UNAVAILABLE, why)
        try:
            grant = self._grant(details.invocation_metadata)
        except StoreUnavailable as exc:
            return _refuse(handler, grpc.StatusCode.UNAVAILABLE, _unavailable(exc))
        role = None if grant is None else "admin" if grant.admin else "app"
        if role is None or (method.startswith(ADMIN_SERVICE) and role != "admin"):
            why = "missing or unknown token" if role is None else "admin token required"
            name = method.rsplit("/", 1)[-1]
            return _refuse(handler, grpc.StatusCode.UNAUTHENTICATED, why, self, name)
        if handler.unary_unary is None:  # the stream checks each probe itself
            return _with_role(handler, role, grant, self)
        inner = handler.unary_unary
        verifier = self.verifier if method.startswith(AUTH_SERVICE) else None

        def checked(request: Message, context: grpc.ServicerContext):
            try:
                return authorized(request, context)
            except StoreUnavailable as exc:  # retry later: nothing was written
                context.abort(grpc.StatusCode.UNAVAILABLE, _unavailable(exc))

        def authorized(request: Message, context: grpc.ServicerContext):
            name = method.rsplit("/", 1)[-1]
            if verifier is not None:
                try:
                    device, scope = verifier.check_device(method, request)
                    check_channel_cert(self.store, device, context)
                except ProofError as exc:
                    log.info("refused %s: %s", method, exc)
                    code = grpc.StatusCode.UNAUTHENTICATED
                    self.refused(context, None, name, code, f"device proof: {exc}")
                try:
                    CALLER.set(authorize(self.bound(grant, device, scope), device, scope, name))
                except AuthzError as exc:
                    log.info("refused %s: %s", method, exc)
                    self.refused(context, device, name, grpc.StatusCode.PERMISSION_DENIED, str(exc))
                rate = self.call_rate
                if rate is not None and not grant.admin and (wait := rate.take(device)):
                    code = grpc.StatusCode.RESOURCE_EXHAUSTED
                    self.refused(context, device, name, code, rate.refusal(wait))
            CALLER_ROLE.set(role)
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            checked, handler.request_deserializer, handler.response_serializer
        )


def _refuse(
    handler,
    code: grpc.StatusCode,
    message: str,
    audit: AuthInterceptor | None = None,
    method: str = "",
):
    def abort(request_or_iterator, context: grpc.ServicerContext):
        if audit is not None:
            audit.refused(context, None, method, code, message)
        context.abort(code, message)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            abort, handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        abort, handler.request_deserializer, handler.response_serializer
    )


def _with_role(handler, role: str, grant: Grant, auth: AuthInterceptor):
    inner, slots = handler.stream_stream, auth.streams
    token = None if grant.admin else grant.app  # the admin's streams count only in all

    def run(request_iterator, context: grpc.ServicerContext):
        # A stream holds a worker thread while open: take a slot first, or refuse.
        why = slots.acquire(token) if slots is not None else None
        if why is not None:
            auth.refused(
                context, None, "StreamAuthenticate", grpc.StatusCode.RESOURCE_EXHAUSTED, why
            )
        CALLER_ROLE.set(role)
        GRANT.set(grant)
        try:
            yield from inner(request_iterator, context)
        except StoreUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, _unavailable(exc))
        finally:
            if slots is not None:
                slots.release(token)

    return grpc.stream_stream_rpc_method_handler(
        run, handler.request_deserializer, handler.response_serializer
    )


_warned_at = [float("-inf")]


def _unavailable(exc: StoreUnavailable) -> str:
    if time.monotonic() - _warned_at[0] >= 10:  # one line per outage, not one per call
        _warned_at[0] = time.monotonic()
        log.warning("store unavailable: %s", exc)
    return "the template store is unavailable; retry with the same idempotency key"
