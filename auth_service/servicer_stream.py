"""The AuthServicer's StreamAuthenticate: many Verify and Identify probes on one stream."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from auth_service.authz import CALLER, GRANT, AuthzError, Caller, authorize
from auth_service.interceptor import DeviceVerifier, bind_grant, check_channel_cert
from auth_service.limits import CallRate
from auth_service.policy import RequestError
from auth_service.proof import ProofError
from auth_service.refusals import RefusalAudit
from auth_service.store import TemplateStore
from kfaar_pb.v1 import auth_pb2


class StreamAuth:
    """Mixin over ``AuthServicer``: needs ``store``, ``verifier``, ``refusals``, the decisions."""

    store: TemplateStore
    verifier: DeviceVerifier
    refusals: RefusalAudit
    call_rate: CallRate | None
    _verify: Callable[[auth_pb2.VerifyRequest], auth_pb2.VerifyReply]
    _identify: Callable[[auth_pb2.IdentifyRequest], auth_pb2.IdentifyReply]

    def StreamAuthenticate(self, request_iterator, context) -> Iterator[auth_pb2.AuthDecision]:
        """Decide each probe as it comes, checking its device proof and grant like a call's."""
        for probe in request_iterator:
            kind = probe.WhichOneof("request")
            out = auth_pb2.AuthDecision(sequence=probe.sequence)
            try:
                if kind is None:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "empty probe")
                req = getattr(probe, kind)
                method = f"/kfaar.v1.AuthService/{kind.capitalize()}"
                try:
                    device, scope = self.verifier.check_device(method, req)
                    check_channel_cert(self.store, device, context)
                except ProofError as exc:
                    msg = f"device proof: {exc}"
                    raise RequestError(grpc.StatusCode.UNAUTHENTICATED, msg) from None
                grant = GRANT.get()
                try:
                    caller = Caller("", device, scope)
                    if grant is not None:
                        grant = bind_grant(self.store, grant, device, scope)
                        caller = authorize(grant, device, scope, kind.capitalize())
                except AuthzError as exc:
                    raise RequestError(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None
                self._charge_rate(grant, device)
                CALLER.set(caller)
                if kind == "verify":
                    out.verify.CopyFrom(self._verify(req))
                else:
                    out.identify.CopyFrom(self._identify(req))
            except RequestError as exc:
                out.error_code, out.error_message = exc.code.value[0], str(exc)
                if not exc.audited:
                    self._audit_stream_refusal(probe, kind, exc, context)
            yield out

    def _charge_rate(self, grant, device: str) -> None:
        """Charge a probe to its device's call rate, like a unary call (the admin: free)."""
        rate, admin = self.call_rate, grant is not None and grant.admin
        if rate is not None and not admin and (wait := rate.take(device)):
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, rate.refusal(wait))

    def _audit_stream_refusal(self, probe, kind: str | None, exc: RequestError, context) -> None:
        """Audit a refused probe like a refused call (aggregated per device or peer)."""
        req = getattr(probe, kind) if kind else None
        claimed = req.proof.device_id if req is not None else ""
        device = claimed if exc.code != grpc.StatusCode.UNAUTHENTICATED and claimed else None
        who = device or f"peer {context.peer()}"
        method = kind.capitalize() if kind else "StreamAuthenticate"
        self.refusals.record(
            who, device, method, None, f"refused: {exc.code.name} ({exc}) [stream]"
        )
