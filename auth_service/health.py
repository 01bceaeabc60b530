"""gRPC health that says why: NOT_SERVING with a reason, and a store watchdog.

The standard health reply carries only a status, so the reason for NOT_SERVING travels
as trailing metadata (``kfaar-health-reason``), which ``kfaar health`` prints. The
watchdog runs the store's integrity check periodically, checks the database is not behind
its rollback anchor (auth_service/anchor.py), and signs audit checkpoints, moving the
anchor on; a failed check, like a failed page read during a call
(``SqlStore.mark_faulty``), turns every service NOT_SERVING until the store is repaired
and the service restarted.
"""

from __future__ import annotations

import logging
import threading

from grpc_health.v1 import health, health_pb2

log = logging.getLogger(__name__)

REASON_KEY = "kfaar-health-reason"
# A replica that serves but should not be trusted as much (e.g. an unsigned store).
WARNING_KEY = "kfaar-health-warning"
CHECKPOINT_EVERY_S = 60.0


class ReasonedHealth(health.HealthServicer):
    """The standard health service, plus a reason for NOT_SERVING in trailing metadata."""

    def __init__(self) -> None:
        super().__init__()
        self.reason = ""
        self.warning = ""  # shown by `kfaar health` even while SERVING
        self.names: list[str] = [""]

    def Check(self, request, context):
        reply = super().Check(request, context)
        said = [(k, v) for k, v in ((REASON_KEY, self.reason), (WARNING_KEY, self.warning)) if v]
        if said:  # metadata values are one line of printable ASCII
            context.set_trailing_metadata(tuple((k, _one_line(v)) for k, v in said))
        return reply

    def serving(self, names: list[str]) -> None:
        """Report SERVING for ``names`` (and the whole server), unless a fault was recorded."""
        self.names = ["", *names]
        status = health_pb2.HealthCheckResponse.NOT_SERVING
        if not self.reason:
            status = health_pb2.HealthCheckResponse.SERVING
        for name in self.names:
            self.set(name, status)

    def unhealthy(self, reason: str) -> None:
        """Report NOT_SERVING everywhere, with ``reason``; it sticks until a restart."""
        self.reason = self.reason or reason
        for name in self.names:
            self.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


def _one_line(text: str) -> str:
    return " ".join(text.split()).encode("ascii", "replace").decode()[:500]


class Watchdog(threading.Thread):
    """Check the store's integrity every ``every_s`` and sign audit checkpoints."""

    def __init__(self, store, every_s: float) -> None:
        super().__init__(name="kfaar-watchdog", daemon=True)
        self.store, self.every_s = store, every_s
        self.done = threading.Event()

    def check(self) -> None:
        """Run the integrity check once; mark the store faulty if it finds anything."""
        problems = self.store.integrity_problems()
        if problems:
            self.store.mark_faulty("integrity check failed: " + "; ".join(problems[:3]))

    def check_anchor(self) -> None:
        """Check the database against its rollback anchor; mark the store faulty if behind."""
        anchor = getattr(self.store, "anchor", None)
        if anchor is not None and self.store.fault is None and (problems := anchor.check()):
            self.store.mark_faulty(anchor.refusal(problems))

    def run(self) -> None:
        waited = 0.0
        step = min(CHECKPOINT_EVERY_S, self.every_s)
        while not self.done.wait(step):
            waited += step
            try:
                if self.store.fault is None:
                    self.store.seal()
                if waited >= self.every_s:
                    waited = 0.0
                    self.check()
                    self.check_anchor()
            except Exception as exc:  # a store error: recorded by the store, keep watching
                log.warning("watchdog: %s", exc)

    def stop(self) -> None:
        self.done.set()
