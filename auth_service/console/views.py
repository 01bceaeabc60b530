"""The console's pages: read-only views of the store, the metrics and the replicas' health."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from auth_service.authz import AUTH_METHODS, DEFAULT_METHODS
from auth_service.console.app import (
    Console,
    Denied,
    blocking,
    page,
    render,
    scope_of,
)
from auth_service.console.auth import Session
from auth_service.console.data import PAGE, AuditFilter

log = logging.getLogger(__name__)
LOCKOUTS_SHOWN = 100  # the longest waits; the rest are counted


def _time(text: str, what: str) -> float | None:
    """Parse ``YYYY-MM-DD[THH:MM[:SS]]`` in UTC; empty: no bound."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise Denied(400, f"{what}: want a time like 2026-12-04T16:00 (UTC)") from None


def _filter(request: Request) -> AuditFilter:
    q = request.query_params
    before = q.get("before", "")
    outcome = q.get("outcome", "")
    if outcome not in ("", "accepted", "refused"):
        raise Denied(400, "outcome: accepted, refused or empty")
    return AuditFilter(
        door=q.get("door", "").strip(),
        subject=q.get("subject", "").strip(),
        operator=q.get("operator", "").strip(),
        method=q.get("method", "").strip(),
        outcome=outcome,
        since=_time(q.get("since", ""), "since"),
        until=_time(q.get("until", ""), "until"),
        before=int(before) if before.isdigit() else None,
    )


def routes(c: Console) -> list[Route]:
    """Return the console's routes, bound to ``c``."""
    r = c.reader

    @page(c)
    async def overview(request: Request, s: Session) -> Response:
        scope = scope_of(s.operator, None)
        await blocking(c.scraper.scrape)
        devices = await blocking(r.devices, scope)
        now = time.time()
        silent = [d for d in devices if now - (d["seen"] or d["created"]) > c.silent_after_s]
        return render(
            request,
            "overview.html",
            s,
            health=await blocking(c.admin.health),
            counts=await blocking(r.counts),
            figures=c.scraper.figures(),
            chain=await blocking(c.chain.status),
            silent=silent,
            lockouts=await blocking(r.lockouts, c.budgets),
            recent=(await blocking(r.audit, AuditFilter(), scope, True))[:10],
        )

    @page(c)
    async def devices(request: Request, s: Session) -> Response:
        scope = scope_of(s.operator, request.query_params.get("scope"))
        return render(
            request,
            "devices.html",
            s,
            scope=scope,
            scopes=[x for x in await blocking(r.scopes) if s.operator.sees(x[0])],
            devices=await blocking(r.devices, scope),
            silent_after=c.silent_after_s,
            now=time.time(),
            gone=await blocking(r.unregistered) if s.operator.scope == "*" else [],
        )

    @page(c)
    async def tokens(request: Request, s: Session) -> Response:
        scope = scope_of(s.operator, request.query_params.get("scope"))
        return render(
            request,
            "tokens.html",
            s,
            scope=scope,
            tokens=await blocking(r.tokens, scope),
            methods=AUTH_METHODS,
            defaults=DEFAULT_METHODS,
        )

    @page(c)
    async def subjects(request: Request, s: Session) -> Response:
        q = request.query_params
        scope = scope_of(s.operator, q.get("scope"))
        rows = await blocking(r.subjects, scope, q.get("after", ""), q.get("q", "").strip())
        return render(
            request,
            "subjects.html",
            s,
            scope=scope,
            rows=rows[:PAGE],
            more=rows[PAGE - 1]["key"] if len(rows) > PAGE else None,
            q=q.get("q", ""),
        )

    async def log_page(request: Request, s: Session, name: str, decisions: bool) -> Response:
        try:
            f = _filter(request)
        except Denied as exc:
            return render(request, "error.html", s, exc.status, why=str(exc))
        rows = await blocking(r.audit, f, scope_of(s.operator, None), decisions)
        more = rows[PAGE - 1]["id"] if len(rows) > PAGE else None
        args = {k: v for k, v in request.query_params.items() if k != "before"}
        chain = await blocking(c.chain.status) if not decisions else None
        return render(request, name, s, rows=rows[:PAGE], more=more, args=args, chain=chain)

    @page(c)
    async def decisions(request: Request, s: Session) -> Response:
        return await log_page(request, s, "decisions.html", True)

    @page(c)
    async def audit(request: Request, s: Session) -> Response:
        return await log_page(request, s, "audit.html", False)

    @page(c)
    async def lockouts(request: Request, s: Session) -> Response:
        rows = [x for x in await blocking(r.lockouts, c.budgets) if s.operator.sees(x["scope"])]
        return render(
            request,
            "lockouts.html",
            s,
            rows=rows[:LOCKOUTS_SHOWN],
            total=len(rows),
            budgets=c.budgets,
        )

    @page(c)
    async def live(request: Request, s: Session) -> Response:
        await blocking(c.scraper.scrape)
        health = await blocking(c.admin.health)
        return render(request, "live.html", s, figures=c.scraper.figures(), health=health)

    @page(c)
    async def models(request: Request, s: Session) -> Response:
        scope = scope_of(s.operator, request.query_params.get("scope"))
        return render(request, "models.html", s, rows=await blocking(r.models, scope))

    return [
        Route("/", overview),
        Route("/devices", devices),
        Route("/tokens", tokens),
        Route("/subjects", subjects),
        Route("/decisions", decisions),
        Route("/audit", audit),
        Route("/lockouts", lockouts),
        Route("/live", live),
        Route("/models", models),
    ]
