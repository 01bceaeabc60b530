"""The AuthServicer's request checks: who calls, on which subject, within which budget."""

from __future__ import annotations

import grpc
from google.protobuf.message import Message

from auth_service.authz import CALLER, DEFAULT_SCOPE, Caller
from auth_service.interceptor import CALLER_ROLE
from auth_service.metrics import Metrics
from auth_service.policy import RequestError
from auth_service.ratelimit import Exhausted, GuessLimiter, Ticket
from auth_service.store import TemplateStore


def check_subject(subject_id: str) -> str:
    """Return the subject id, or refuse one that is empty, too long or unprintable."""
    if not 1 <= len(subject_id) <= 128 or not subject_id.isprintable():
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "subject_id must be 1-128 printable")
    return subject_id


class RequestChecks:
    """Mixin over ``AuthServicer``: needs ``store``, ``guesses`` and ``metrics``."""

    store: TemplateStore
    guesses: GuessLimiter
    metrics: Metrics

    def _caller(self, req: Message) -> Caller:
        """Return the authorized caller (in-process calls without the interceptor: default)."""
        caller = CALLER.get()
        if caller is None:
            admin = CALLER_ROLE.get() == "admin"
            caller = Caller("admin" if admin else "", req.proof.device_id, DEFAULT_SCOPE, admin)
        return caller

    def _take(self, caller: Caller, subject_key: str | None) -> Ticket:
        """Check the guess budgets of one Verify or Identify, or refuse it (RESOURCE_EXHAUSTED).

        A device of the subject's owner app whose token may Enroll or Rekey skips the
        subject-wide budget (it could already put any face in the subject), so other apps'
        misses cannot lock its new doors out. Identify has no single subject: its budgets
        stay as they were.
        """
        owner = (
            subject_key is not None
            and caller.may_change
            and not caller.admin
            and self.store.subject_owner(subject_key) == caller.app
        )
        try:
            return self.guesses.take(caller.device, caller.app, subject_key, owner)
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
