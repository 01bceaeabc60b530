"""The AuthService and AdminService servicers: enroll, verify, identify, revoke, rekey."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import numpy as np
from google.protobuf.message import Message

from auth_service.index import IndexConfig, TemplateIndex
from auth_service.interceptor import CALLER_ROLE, DeviceVerifier, token_hash
from auth_service.metrics import Metrics
from auth_service.proof import ProofError
from auth_service.ratelimit import Backoff
from auth_service.store import EMBED_DIM, TemplateStore
from kfaar_pb.v1 import auth_pb2, auth_pb2_grpc, common_pb2

log = logging.getLogger(__name__)

MAX_TEMPLATES = 32
MAX_TOP_K = 10
SPACE_NAMES = {
    common_pb2.EMBEDDING_SPACE_VIRTUAL: "VIRTUAL",
    common_pb2.EMBEDDING_SPACE_RECOVERED: "RECOVERED",
}


class RequestError(Exception):
    """A request the service refuses: carries the gRPC status code and a message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Policy:
    """What the service accepts and how it decides."""

    model: str  # "name/version" of the only model version accepted, e.g. "hpvfg/1.0.0"
    thresholds: dict[int, float] = field(default_factory=dict)  # space -> cosine threshold

    @classmethod
    def from_bundle(cls, bundle, allow_recovered: bool = False) -> Policy:
        """Accept the bundle's model version, at the thresholds its export calibrated."""
        from edge_agent.recognizer import SAME_PERSON_THRESHOLD

        m = bundle.manifest
        thresholds = {
            common_pb2.EMBEDDING_SPACE_VIRTUAL: m.get("virtual_threshold", SAME_PERSON_THRESHOLD)
        }
        if allow_recovered:
            thresholds[common_pb2.EMBEDDING_SPACE_RECOVERED] = m["kvfa_threshold"]
        return cls(f"hpvfg/{bundle.version}", thresholds)

    def check(self, emb: common_pb2.Embedding) -> np.ndarray:
        """Validate one embedding's tags and values; return it as a unit vector."""
        model = f"{emb.model.name}/{emb.model.version}"
        if emb.space not in self.thresholds:
            allowed = ", ".join(SPACE_NAMES[s] for s in self.thresholds)
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"embedding space {emb.space} is not accepted here (accepted: {allowed})",
            )
        if model != self.model:
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"model version {model!r} does not match the service's {self.model!r}: "
                "re-enroll or rekey with the current model",
            )
        v = np.asarray(emb.values, dtype=np.float32)
        if v.shape != (EMBED_DIM,):
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT, f"embedding has {v.size} values, need {EMBED_DIM}"
            )
        if not np.isfinite(v).all():
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "embedding has NaN or Inf values")
        norm = float(np.linalg.norm(v))
        if not 0.5 <= norm <= 2.0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"embedding norm {norm:.3g}")
        return v / norm

    def batch(self, embs) -> tuple[np.ndarray, int]:
        if not 1 <= len(embs) <= MAX_TEMPLATES:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT, f"send 1 to {MAX_TEMPLATES} templates"
            )
        vecs = np.stack([self.check(e) for e in embs])
        if len({e.space for e in embs}) != 1:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "templates mix embedding spaces")
        return vecs, embs[0].space


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
        subject_backoff: Backoff,
        device_backoff: Backoff,
        metrics: Metrics,
        index_config: IndexConfig | None = None,
    ) -> None:
        self.store, self.policy, self.verifier, self.metrics = store, policy, verifier, metrics
        self.backoff = {"subject": subject_backoff, "device": device_backoff}
        # The 1:N indexes, one per embedding space, loaded from the store on first use and
        # then updated in step with it. The lock keeps each store write and its index
        # update together, so a concurrent load never sees one without the other.
        self.index_config = index_config or IndexConfig()
        self._indexes: dict[int, TemplateIndex] = {}
        self._write_lock = threading.Lock()

    def index(self, space: int) -> TemplateIndex:
        """Return the 1:N index of one embedding space, loading it on first use."""
        with self._write_lock:
            if space not in self._indexes:
                gallery = self.store.gallery(self.policy.model, space)
                self._indexes[space] = TemplateIndex.from_gallery(gallery, self.index_config)
            return self._indexes[space]

    def _write(self, subject: str, write: Callable[[], int]) -> int:
        """Run a store write that touches ``subject`` and bring the loaded indexes in line."""
        with self._write_lock:
            out = write()
            tags, stored = self.store.subject_templates(subject)
            for space, index in self._indexes.items():
                index.remove(subject)
                keep = [i for i, t in enumerate(tags) if t == (self.policy.model, space)]
                if keep:
                    index.add(subject, stored[keep])
            return out

    # -- the decisions, shared by unary calls and the stream --------------------------
    def _enroll(self, req: auth_pb2.EnrollRequest) -> auth_pb2.EnrollReply:
        subject = _subject(req.subject_id)
        vecs, space = self.policy.batch(req.templates)
        n = self._write(subject, lambda: self.store.enroll(subject, self.policy.model, space, vecs))
        return auth_pb2.EnrollReply(subject_id=subject, templates_stored=n)

    def _verify(self, req: auth_pb2.VerifyRequest) -> auth_pb2.VerifyReply:
        subject = _subject(req.subject_id)
        probe = self.policy.check(req.probe)
        keys = {"subject": subject, "device": req.proof.device_id}
        wait = max(self.backoff[kind].retry_after(k) for kind, k in keys.items())
        if wait > 0:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many failed verifications: retry in {wait:.0f} s",
            )
        tags, vecs = self.store.subject_templates(subject)
        if not tags:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"unknown subject {subject!r}")
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
        match = score >= self.policy.thresholds[req.probe.space]
        for kind, k in keys.items():
            self.backoff[kind].success(k) if match else self.backoff[kind].failure(k)
        decision = "accept" if match else "reject"
        self.metrics.decisions.labels(decision).inc()
        self.store.audit(req.proof.device_id, "Verify", subject, decision)
        reply = auth_pb2.VerifyReply(match=match)
        if CALLER_ROLE.get() == "admin":
            reply.score = score
        return reply

    def _identify(self, req: auth_pb2.IdentifyRequest) -> auth_pb2.IdentifyReply:
        probe = self.policy.check(req.probe)
        top_k = req.top_k or 1
        if not 1 <= top_k <= MAX_TOP_K:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"top_k must be 1 to {MAX_TOP_K}")
        thr = self.policy.thresholds[req.probe.space]
        reply = auth_pb2.IdentifyReply()
        for score, subject in self.index(req.probe.space).search(probe, thr, top_k):
            c = reply.candidates.add(subject_id=subject)
            if CALLER_ROLE.get() == "admin":
                c.score = score
        outcome = f"{len(reply.candidates)} candidates"
        self.store.audit(req.proof.device_id, "Identify", None, outcome)
        return reply

    def _revoke(self, req: auth_pb2.RevokeRequest) -> auth_pb2.RevokeReply:
        subject = _subject(req.subject_id)
        n = self._write(subject, lambda: self.store.revoke(subject))
        if n == 0:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"unknown subject {req.subject_id!r}")
        self.store.audit(req.proof.device_id, "Revoke", req.subject_id, f"{n} removed")
        return auth_pb2.RevokeReply(templates_removed=n)

    def _rekey(self, req: auth_pb2.RekeyRequest) -> auth_pb2.RekeyReply:
        subject = _subject(req.subject_id)
        vecs, space = self.policy.batch(req.templates)
        if not self.store.subject_templates(subject)[0]:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"unknown subject {subject!r}")
        n = self._write(
            subject, lambda: self.store.replace(subject, self.policy.model, space, vecs)
        )
        self.store.audit(req.proof.device_id, "Rekey", subject, f"{n} stored")
        return auth_pb2.RekeyReply(templates_stored=n)

    # -- gRPC entry points ------------------------------------------------------------
    def _run(self, name: str, fn, req: Message, reply_type: type, context: grpc.ServicerContext):
        try:
            if getattr(req, "idempotency_key", ""):
                raw = self.store.once(
                    req.idempotency_key, name, lambda: fn(req).SerializeToString()
                )
                return reply_type.FromString(raw)
            return fn(req)
        except RequestError as exc:
            self.metrics.refusals.labels(exc.code.name).inc()
            self.store.audit(req.proof.device_id, name, None, f"refused: {exc.code.name}")
            context.abort(exc.code, str(exc))

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
                    self.verifier.check(method, req)
                except ProofError as exc:
                    msg = f"device proof: {exc}"
                    raise RequestError(grpc.StatusCode.UNAUTHENTICATED, msg) from None
                if kind == "verify":
                    out.verify.CopyFrom(self._verify(req))
                else:
                    out.identify.CopyFrom(self._identify(req))
            except RequestError as exc:
                out.error_code, out.error_message = exc.code.value[0], str(exc)
            yield out


class AdminServicer(auth_pb2_grpc.AdminServiceServicer):
    def __init__(self, store: TemplateStore) -> None:
        self.store = store

    def RegisterDevice(self, request, context):
        if not request.device_id or len(request.verify_key) != 32:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "need a device_id and a 32-byte Ed25519 key"
            )
        self.store.put_device(request.device_id, request.verify_key)
        self.store.audit(None, "RegisterDevice", None, request.device_id)
        return auth_pb2.RegisterDeviceReply()

    def UnregisterDevice(self, request, context):
        if not self.store.remove_device(request.device_id):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown device {request.device_id!r}")
        self.store.audit(None, "UnregisterDevice", None, request.device_id)
        return auth_pb2.UnregisterDeviceReply()

    def CreateAppToken(self, request, context):
        if not request.app_name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "need an app_name")
        token = secrets.token_urlsafe(32)
        self.store.put_token(request.app_name, token_hash(token))
        self.store.audit(None, "CreateAppToken", None, request.app_name)
        return auth_pb2.CreateAppTokenReply(token=token)

    def RevokeAppToken(self, request, context):
        if not self.store.remove_token(request.app_name):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown app {request.app_name!r}")
        self.store.audit(None, "RevokeAppToken", None, request.app_name)
        return auth_pb2.RevokeAppTokenReply()
