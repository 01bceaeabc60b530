"""The AuthService and AdminService servicers: enroll, verify, identify, revoke, rekey."""

from __future__ import annotations

import logging
from functools import partial

import grpc
from google.protobuf.message import Message

from auth_service.access_grant import DEFAULT_TTL_S as GRANT_TTL_S
from auth_service.access_grant import GrantSigner
from auth_service.admin import AdminServicer  # noqa: F401  (server.py imports it from here)
from auth_service.authz import key_subject, shown, subject_key
from auth_service.idempotency import DEFAULT_TTL_S, WRITES, ReplyCache, check_key
from auth_service.index import IndexConfig
from auth_service.interceptor import CALLER_ROLE, DeviceVerifier
from auth_service.limits import CallRate
from auth_service.liveness_policy import LivenessPolicy
from auth_service.metrics import Metrics
from auth_service.policy import (  # noqa: F401  (Policy and RequestError are imported from here)
    MAX_TEMPLATES,
    SPACE_NAMES,
    Policy,
    RequestError,
)
from auth_service.ratelimit import GuessLimiter
from auth_service.refusals import RefusalAudit
from auth_service.servicer_checks import RequestChecks, check_subject
from auth_service.servicer_index import IndexedWrites
from auth_service.servicer_stream import StreamAuth
from auth_service.store import CapReached, NotOwner, QuotaReached, TemplateStore
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc

log = logging.getLogger(__name__)

MAX_TOP_K = 10
# Templates one subject may hold in all, across Enrolls: more only slow its Verify down
# (and widen what an impostor can match); Rekey replaces them instead.
MAX_TEMPLATES_PER_SUBJECT = 32
# The owner recorded for subjects the admin token enrolled: no app name can equal it.
# Not printable, so no app can be named so; PostgreSQL text refuses NUL, so not "\x00admin".
ADMIN_OWNER = "\x1fadmin"


def attempt_id(req: Message) -> str:
    """Name the attempt a decision answers: its idempotency key, else its proof's nonce."""
    if req.idempotency_key:
        return check_key(req.idempotency_key)
    return "nonce:" + req.proof.nonce.hex()


class AuthServicer(IndexedWrites, RequestChecks, StreamAuth, auth_pb2_grpc.AuthServiceServicer):
    """Decide Enroll, Verify, Identify, Revoke and Rekey, unary or streamed."""

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
        grant_ttl_s: float = GRANT_TTL_S,
        subjects_per_app: int | None = None,
        call_rate: CallRate | None = None,
    ) -> None:
        self.store, self.policy, self.verifier, self.metrics = store, policy, verifier, metrics
        self.refusals = refusals or RefusalAudit(store)
        self.liveness = liveness or LivenessPolicy.from_env()
        self.replies = ReplyCache(store, idempotency_ttl_s)
        self.guesses = guesses
        self.grants = GrantSigner(store, grant_ttl_s)  # signed opens for door controllers
        self.subjects_per_app = subjects_per_app  # None: no quota (in-process use)
        self.call_rate = call_rate  # streamed probes' rate; unary calls: the interceptor's
        self._init_indexes(index_config)
        metrics.watch_indexes(lambda: list(self._indexes.values()))

    # -- the decisions, shared by unary calls and the stream --------------------------
    def _enroll(self, req: auth_pb2.EnrollRequest) -> auth_pb2.EnrollReply:
        caller = self._caller(req)
        subject = check_subject(req.subject_id)
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
                    None if caller.admin else self.subjects_per_app,
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
            except QuotaReached as exc:
                raise RequestError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"this app already holds {exc.held} enrolled subjects, the most one app "
                    "may (--max-subjects-per-app): revoke subjects it no longer needs, or "
                    "ask the admin to raise the quota",
                ) from None
            self.store.audit(caller.device, "Enroll", key, f"{n} stored")
            return n

        n = self._write(key, write)
        return auth_pb2.EnrollReply(subject_id=subject, templates_stored=n)

    def _verify(self, req: auth_pb2.VerifyRequest) -> auth_pb2.VerifyReply:
        caller = self._caller(req)
        attempt = attempt_id(req)  # checked before deciding: a streamed probe's key too
        subject = check_subject(req.subject_id)
        key = subject_key(caller.scope, subject)
        probe = self.policy.check(req.probe)
        self.policy.allowed(req.probe.space, caller.scope)
        # A refusal's row goes through the aggregating audit: one a second per device.
        audit = partial(self.refusals.record, caller.device, caller.device, "Verify", key)
        self.liveness.check(caller.scope, req, audit)
        ticket = self._take(caller, key)
        tags, vecs = self.store.subject_templates(key)
        if not tags:  # a miss like any other (guessing ids costs too)
            self.guesses.settle(ticket, matched=False)
            self.metrics.guess_failures.labels("Verify").inc()
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"unknown subject {subject!r}")
        single = self._single_view(caller, req.probe)
        usable = [i for i, t in enumerate(tags) if t == (self.policy.model, req.probe.space)]
        if not usable:  # not settled: the call keeps its reserved unit, like a miss
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
        if match:
            reply.access_grant = self.grants.issue(attempt, caller.device, caller.scope, subject)
        return reply

    def _identify(self, req: auth_pb2.IdentifyRequest) -> auth_pb2.IdentifyReply:
        caller = self._caller(req)
        attempt = attempt_id(req)
        probe = self.policy.check(req.probe)
        self.policy.allowed(req.probe.space, caller.scope)
        audit = partial(self.refusals.record, caller.device, caller.device, "Identify", None)
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
        found = self.index(req.probe.space, caller.scope).search(probe, thr, top_k)
        for score, key in found:
            c = reply.candidates.add(subject_id=key_subject(key))
            if CALLER_ROLE.get() == "admin":
                c.score = score
        self.guesses.settle(ticket, bool(reply.candidates))
        if not reply.candidates:
            self.metrics.guess_failures.labels("Identify").inc()
        # The grant names the best match, the one a door lets in, and only as the store
        # holds it now: this replica's index may not have followed another's Revoke yet.
        if found and self._still_matches(found[0][1], req.probe.space, probe, thr):
            best = reply.candidates[0].subject_id
            reply.access_grant = self.grants.issue(attempt, caller.device, caller.scope, best)
        outcome = f"{len(reply.candidates)} candidates"
        self.store.audit(caller.device, "Identify", None, outcome)
        return reply

    def _still_matches(self, key: str, space: int, probe, threshold: float) -> bool:
        """Return whether the store's templates of ``key`` match ``probe`` (Verify's rule)."""
        tags, vecs = self.store.subject_templates(key)
        usable = [i for i, t in enumerate(tags) if t == (self.policy.model, space)]
        if usable and float((vecs[usable] @ probe).max()) >= threshold:
            return True
        log.warning("no grant: %s matched in the index but not in the store", shown(key))
        return False

    def _revoke(self, req: auth_pb2.RevokeRequest) -> auth_pb2.RevokeReply:
        caller = self._caller(req)
        subject = check_subject(req.subject_id)
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
        subject = check_subject(req.subject_id)
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
                reply = fn(req)
            elif name in WRITES:
                reply = self._write_once(name, fn, req, reply_type)
            else:
                self.replies.check_read(req)  # reads are decided afresh, never from the cache
                reply = fn(req)
        except RequestError as exc:
            self.metrics.refusals.labels(exc.code.name).inc()
            if not exc.audited:
                self._audit_refusal(req.proof.device_id, name, exc)
            context.abort(exc.code, str(exc))
        if name in ("Rekey", "Revoke"):  # committed: a rollback must not bring it back
            self.store.seal()
        return reply

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
