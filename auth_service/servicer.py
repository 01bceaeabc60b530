"""The AuthService and AdminService servicers: enroll, verify, identify, revoke, rekey."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial

import grpc
from google.protobuf.message import Message

from auth_service.admin import AdminServicer  # noqa: F401  (server.py imports it from here)
from auth_service.authz import (
    CALLER,
    DEFAULT_SCOPE,
    GRANT,
    AuthzError,
    Caller,
    authorize,
    key_scope,
    key_subject,
    subject_key,
)
from auth_service.idempotency import DEFAULT_TTL_S, WRITES, ReplyCache
from auth_service.index import IndexConfig, SearchIndex, build_index
from auth_service.interceptor import CALLER_ROLE, DeviceVerifier, bind_grant, check_channel_cert
from auth_service.liveness_policy import LivenessPolicy
from auth_service.metrics import Metrics
from auth_service.policy import (  # noqa: F401  (Policy and RequestError are imported from here)
    MAX_TEMPLATES,
    SPACE_NAMES,
    Policy,
    RequestError,
)
from auth_service.proof import ProofError
from auth_service.ratelimit import Exhausted, GuessLimiter, Ticket
from auth_service.refusals import RefusalAudit
from auth_service.store import CapReached, Gallery, NotOwner, TemplateStore
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger(__name__)

MAX_TOP_K = 10
# Templates one subject may hold in all, across Enrolls: more only slow its Verify down
# (and widen what an impostor can match); Rekey replaces them instead.
MAX_TEMPLATES_PER_SUBJECT = 32
# The owner recorded for subjects the admin token enrolled: no app name can equal it.
ADMIN_OWNER = "\x00admin"


def _subject(subject_id: str) -> str:
    if not 1 <= len(subject_id) <= 128 or not subject_id.isprintable():
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "subject_id must be 1-128 printable")
    return subject_id


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(
        self,
        store: TemplateStore,
        policy: Policy,
        verifier: DeviceVerifier,
        guesses: GuessLimiter,
        metrics: Metrics,
        index_config: IndexConfig | None = None,
        idempotency_ttl_s: float = DEFAULT_TTL_S,
        liveness: LivenessPolicy | None = None,
        refusals: RefusalAudit | None = None,
    ) -> None:
        self.store, self.policy, self.verifier, self.metrics = store, policy, verifier, metrics
        self.refusals = refusals or RefusalAudit(store)
        self.liveness = liveness or LivenessPolicy.from_env()
        self.replies = ReplyCache(store, idempotency_ttl_s)
        self.guesses = guesses
        # The 1:N indexes, one per embedding space and scope, loaded from the store on first
        # use and then updated in step with it. The lock keeps each store write and its index
        # update together, so a concurrent load never sees one without the other.
        self.index_config = index_config or IndexConfig()
        self._indexes: dict[tuple[int, str], SearchIndex] = {}
        self._write_lock = threading.RLock()
        # Subjects written inside an idempotent write's transaction: their index update
        # waits for the commit, so a rolled-back write never reaches the index.
        self._deferred: set[str] | None = None
        metrics.watch_indexes(lambda: list(self._indexes.values()))

    def index(self, space: int, scope: str = DEFAULT_SCOPE) -> SearchIndex:
        """Return the 1:N index of one embedding space and scope, loading it on first use."""
        loaded = self._indexes.get((space, scope))  # no lock: Identify never waits on writes
        if loaded is not None:
            return loaded
        with self._write_lock:
            if (space, scope) not in self._indexes:
                everyone = self.store.gallery(self.policy.model, space)
                mine = [i for i, s in enumerate(everyone.subjects) if key_scope(s) == scope]
                gallery = Gallery([everyone.subjects[i] for i in mine], everyone.vectors[mine])
                # Exact search until the shortlist is built: serve now, not in a minute.
                index = build_index(
                    gallery, self.index_config, f"{self.policy.model}/{space}/{scope}", wait=False
                )
                self._indexes[(space, scope)] = index
            return self._indexes[(space, scope)]

    def _write(self, subject: str, write: Callable[[], int]) -> int:
        """Run a store write that touches ``subject`` and bring the loaded indexes in line."""
        with self._write_lock:
            try:
                return write()
            finally:
                if self._deferred is None:
                    self._sync_index(subject)
                else:
                    self._deferred.add(subject)

    def apply_change(self, subject: str) -> None:
        """Bring the loaded indexes in line with a subject another replica wrote."""
        with self._write_lock:
            self._sync_index(subject)

    def reload_indexes(self) -> None:
        """Reload every loaded index from the store (the change log had a gap)."""
        with self._write_lock:
            loaded = list(self._indexes)
            self._indexes.clear()
            for space, scope in loaded:
                self.index(space, scope)

    def _sync_index(self, subject: str) -> None:
        """Make the loaded indexes hold exactly the subject's stored templates."""
        tags, stored = self.store.subject_templates(subject)
        for (space, scope), index in self._indexes.items():
            if scope != key_scope(subject):
                continue
            keep = [i for i, t in enumerate(tags) if t == (self.policy.model, space)]
            index.replace(subject, stored[keep])  # one step: no search sees the subject gone

    def _write_once(self, name: str, fn, req: Message, reply_type: type) -> Message:
        """Run an idempotent write and its cached reply in one transaction, then index it."""
        with self._write_lock:
            self._deferred = set()
            try:
                return self.replies.write_once(name, req, lambda: fn(req), reply_type)
            finally:
                touched, self._deferred = self._deferred, None
                for subject in touched:
                    self._sync_index(subject)

    # -- who calls, on which subject, within which guess budget ------------------------
    def _caller(self, req: Message) -> Caller:
        """Return the authorized caller (in-process calls without the interceptor: default)."""
        caller = CALLER.get()
        if caller is None:
            admin = CALLER_ROLE.get() == "admin"
            caller = Caller("admin" if admin else "", req.proof.device_id, DEFAULT_SCOPE, admin)
        return caller

    def _take(self, caller: Caller, subject_key: str | None) -> Ticket:
        """Check the guess budgets of one Verify or Identify, or refuse it (RESOURCE_EXHAUSTED)."""
        try:
            return self.guesses.take(caller.device, caller.app, subject_key)
        except Exhausted as exc:
            self.metrics.guess_refusals.labels(exc.kind).inc()
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None

    def _owner_only(self, caller: Caller, key: str, subject: str, what: str) -> None:
        """Refuse a change to a subject that another app owns (PERMISSION_DENIED).

        A subject belongs to the app (token) that enrolled it. Without this, any device of
        the scope whose token may enroll could add its own face to alice and pass as her,
        or rekey her templates away (issue 20).
        """
        if caller.admin:
            return
        owner = self.store.subject_owner(key)
        if owner == caller.app:
            return
        whose = "no app (it predates ownership)" if owner is None else "another app"
        raise RequestError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"subject {subject!r} belongs to {whose}: only its owner or the admin may {what} it",
        )

    def _single_view(self, caller: Caller, probe) -> bool:
        """Return whether the caller's device was registered single-frame (refuse its fusing)."""
        single = self.store.device_single_view(caller.device)
        if single and probe.fused_views > 1:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "this device is registered single-frame: its probes may not be fused "
                "(register it again without --single-view)",
            )
        return single

    # -- the decisions, shared by unary calls and the stream --------------------------
    def _enroll(self, req: auth_pb2.EnrollRequest) -> auth_pb2.EnrollReply:
        caller = self._caller(req)
        subject = _subject(req.subject_id)
        key = subject_key(caller.scope, subject)
        vecs, space = self.policy.batch(req.templates)
        self.policy.allowed(space, caller.scope)

        def write() -> int:
            owner = ADMIN_OWNER if caller.admin else caller.app
            try:  # claim, ownership, cap and insert in one transaction, the subject locked
                n = self.store.enroll_owned(
                    key,
                    owner,
                    caller.device,
                    caller.admin,
                    self.policy.model,
                    space,
                    vecs,
                    MAX_TEMPLATES_PER_SUBJECT,
                )
            except NotOwner as exc:
                whose = "no app (it predates ownership)" if exc.owner is None else "another app"
                raise RequestError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"subject {subject!r} belongs to {whose}: only its owner or the admin "
                    "may add templates to it",
                ) from None
            except CapReached as exc:
                raise RequestError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"subject {subject!r} holds {exc.held} templates, at most "
                    f"{MAX_TEMPLATES_PER_SUBJECT} in all: rekey to replace them",
                ) from None
            self.store.audit(caller.device, "Enroll", key, f"{n} stored")
            return n

        n = self._write(key, write)
        return auth_pb2.EnrollReply(subject_id=subject, templates_stored=n)

    def _verify(self, req: auth_pb2.VerifyRequest) -> auth_pb2.VerifyReply:
        caller = self._caller(req)
        subject = _subject(req.subject_id)
        key = subject_key(caller.scope, subject)
        probe = self.policy.check(req.probe)
        self.policy.allowed(req.probe.space, caller.scope)
        audit = partial(self.store.audit, caller.device, "Verify", key)
        self.liveness.check(caller.scope, req, audit)
        ticket = self._take(caller, key)
        tags, vecs = self.store.subject_templates(key)
        if not tags:  # a miss like any other (guessing ids costs too)
            self.guesses.settle(ticket, matched=False)
            self.metrics.guess_failures.labels("Verify").inc()
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"unknown subject {subject!r}")
        single = self._single_view(caller, req.probe)
        usable = [i for i, t in enumerate(tags) if t == (self.policy.model, req.probe.space)]
        if not usable:
            held = ", ".join(sorted({f"{m} {SPACE_NAMES.get(sp, sp)}" for m, sp in tags}))
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"subject {subject!r} has templates of {held} only; this service runs "
                f"{self.policy.model} ({SPACE_NAMES[req.probe.space]}): re-enroll or rekey "
                "the subject with the current model",
            )
        score = float((vecs[usable] @ probe).max())
        match = score >= self.policy.threshold(req.probe, single)
        self.guesses.settle(ticket, match)
        if not match:
            self.metrics.guess_failures.labels("Verify").inc()
        decision = "accept" if match else "reject"
        self.metrics.decisions.labels(decision).inc()
        self.store.audit(caller.device, "Verify", key, decision)
        reply = auth_pb2.VerifyReply(
            match=match,
            operating_point=self.policy.operating_point(req.probe.space, not single),
            decided_at=self.policy.decided_at(req.probe.space, single),
        )
        if CALLER_ROLE.get() == "admin":
            reply.score = score
        return reply

    def _identify(self, req: auth_pb2.IdentifyRequest) -> auth_pb2.IdentifyReply:
        caller = self._caller(req)
        probe = self.policy.check(req.probe)
        self.policy.allowed(req.probe.space, caller.scope)
        audit = partial(self.store.audit, caller.device, "Identify", None)
        self.liveness.check(caller.scope, req, audit)
        top_k = req.top_k or 1
        if not 1 <= top_k <= MAX_TOP_K:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"top_k must be 1 to {MAX_TOP_K}")
        ticket = self._take(caller, None)
        single = self._single_view(caller, req.probe)
        thr = self.policy.threshold(req.probe, single)
        point = self.policy.operating_point(req.probe.space, not single)
        reply = auth_pb2.IdentifyReply(
            operating_point=point, decided_at=self.policy.decided_at(req.probe.space, single)
        )
        for score, key in self.index(req.probe.space, caller.scope).search(probe, thr, top_k):
            c = reply.candidates.add(subject_id=key_subject(key))
            if CALLER_ROLE.get() == "admin":
                c.score = score
        self.guesses.settle(ticket, bool(reply.candidates))
        if not reply.candidates:
            self.metrics.guess_failures.labels("Identify").inc()
        outcome = f"{len(reply.candidates)} candidates"
        self.store.audit(caller.device, "Identify", None, outcome)
        return reply

    def _revoke(self, req: auth_pb2.RevokeRequest) -> auth_pb2.RevokeReply:
        caller = self._caller(req)
        subject = _subject(req.subject_id)
        key = subject_key(caller.scope, subject)
        if not self.store.subject_templates(key)[0]:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"unknown subject {subject!r}")
        self._owner_only(caller, key, subject, "revoke")
        n = self._write(key, lambda: self.store.revoke(key))
        if n == 0:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"unknown subject {subject!r}")
        self.store.audit(caller.device, "Revoke", key, f"{n} removed")
        return auth_pb2.RevokeReply(templates_removed=n)

    def _rekey(self, req: auth_pb2.RekeyRequest) -> auth_pb2.RekeyReply:
        caller = self._caller(req)
        subject = _subject(req.subject_id)
        key = subject_key(caller.scope, subject)
        vecs, space = self.policy.batch(req.templates)
        self.policy.allowed(space, caller.scope)
        if not self.store.subject_templates(key)[0]:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"unknown subject {subject!r}")
        self._owner_only(caller, key, subject, "rekey")
        n = self._write(key, lambda: self.store.replace(key, self.policy.model, space, vecs))
        self.store.audit(caller.device, "Rekey", key, f"{n} stored")
        return auth_pb2.RekeyReply(templates_stored=n)

    # -- gRPC entry points ------------------------------------------------------------
    def _run(self, name: str, fn, req: Message, reply_type: type, context: grpc.ServicerContext):
        try:
            if not getattr(req, "idempotency_key", ""):
                return fn(req)
            if name in WRITES:
                return self._write_once(name, fn, req, reply_type)
            self.replies.check_read(req)  # reads are decided afresh, never from the cache
            return fn(req)
        except RequestError as exc:
            self.metrics.refusals.labels(exc.code.name).inc()
            self._audit_refusal(req.proof.device_id, name, exc)
            context.abort(exc.code, str(exc))

    def _audit_refusal(self, device: str, method: str, exc: RequestError) -> None:
        """Audit a refusal: one row a second per device at most, counting the others."""
        self.refusals.record(device, device, method, None, f"refused: {exc.code.name} ({exc})")

    def Enroll(self, request, context):
        return self._run("Enroll", self._enroll, request, auth_pb2.EnrollReply, context)

    def Verify(self, request, context):
        return self._run("Verify", self._verify, request, auth_pb2.VerifyReply, context)

    def Identify(self, request, context):
        return self._run("Identify", self._identify, request, auth_pb2.IdentifyReply, context)

    def Revoke(self, request, context):
        return self._run("Revoke", self._revoke, request, auth_pb2.RevokeReply, context)

    def Rekey(self, request, context):
        return self._run("Rekey", self._rekey, request, auth_pb2.RekeyReply, context)

    def StreamAuthenticate(self, request_iterator, context):
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
                CALLER.set(caller)
                if kind == "verify":
                    out.verify.CopyFrom(self._verify(req))
                else:
                    out.identify.CopyFrom(self._identify(req))
            except RequestError as exc:
                out.error_code, out.error_message = exc.code.value[0], str(exc)
                self._audit_stream_refusal(probe, kind, exc, context)
            yield out

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
