"""The console's web app: security headers, sessions, CSRF checks and rendering.

Starlette with server-rendered Jinja2 pages (autoescaped) and no JavaScript at all: the
Content-Security-Policy allows only this origin's stylesheet and forms.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from auth_service.console.auth import Directory, LoginLimiter, Operator, Session, Sessions
from auth_service.console.sql import StoreUnreadable
from auth_service.ratelimit import GuessBudgets

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
MAX_FORM_BYTES = 64 * 1024
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


@dataclass
class Console:
    """What the pages need: who may log in, the store reader, AdminService, metrics."""

    directory: Directory
    reader: object  # auth_service.console.data.Reader
    admin: object  # auth_service.console.backend.Admin
    scraper: object  # auth_service.console.live.Scraper
    chain: object  # auth_service.console.chain.Chain
    budgets: GuessBudgets = field(default_factory=GuessBudgets)
    tls: bool = False
    silent_after_s: float = 3600.0
    sessions: Sessions = field(default_factory=Sessions)
    limiter: LoginLimiter = field(default_factory=LoginLimiter)

    @property
    def cookie(self) -> str:
        # __Host-: the browser keeps it only if Secure, host-only and for path /.
        return "__Host-kfaar_console" if self.tls else "kfaar_console"


def _when(t: float | None) -> str:
    if t is None:
        return "never"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(t: float | None) -> str:
    if t is None:
        return "never"
    s = max(0, time.time() - t)
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{int(s // n)} {unit} ago"
    return f"{int(s)} s ago"


def _dur(s: float) -> str:
    s = int(s + 0.999)
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    return f"{h} h {m} min" if h else f"{m} min {sec} s" if m else f"{sec} s"


def _num(x, fmt: str = "{:.1f}") -> str:
    return "–" if x is None else fmt.format(x)


ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,  # every {{ }} is escaped; the templates never use |safe
    undefined=jinja2.StrictUndefined,
)
ENV.filters.update(when=_when, ago=_ago, num=_num, dur=_dur)


def render(request: Request, name: str, session: Session | None, status: int = 200, **ctx):
    """Render a page; flash messages are shown once."""
    flash = []
    if session is not None:
        flash, session.flash = session.flash, []
    html = ENV.get_template(name).render(
        request=request, session=session, op=session.operator if session else None,
        flash=flash, path=request.url.path, **ctx,
    )  # fmt: skip
    return HTMLResponse(html, status)


class Headers:
    """ASGI middleware: the same strict headers on every response."""

    def __init__(self, app, tls: bool) -> None:
        self.app, self.tls = app, tls

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        static = scope["path"].startswith("/static/")

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                h = list(message.get("headers", []))
                h += [
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    # Not no-referrer: with it, Chromium sends "Origin: null" on our own forms.
                    (b"referrer-policy", b"same-origin"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                ]
                if not static:
                    h.append((b"cache-control", b"no-store"))
                if self.tls:
                    h.append((b"strict-transport-security", b"max-age=31536000"))
                message["headers"] = h
            await send(message)

        await self.app(scope, receive, with_headers)


class Denied(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def same_origin(request: Request) -> bool:
    """Return False for a request another site's page made (Origin or Sec-Fetch-Site)."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        return False
    return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


async def read_form(request: Request) -> dict[str, list[str]]:
    """Parse a urlencoded form body of at most ``MAX_FORM_BYTES``."""
    if request.headers.get("content-type", "").split(";")[0] != (
        "application/x-www-form-urlencoded"
    ):
        raise Denied(415, "forms must be application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Denied(413, "form too large")
    try:
        return parse_qs(body.decode(), keep_blank_values=True, max_num_fields=200)
    except (UnicodeDecodeError, ValueError):
        raise Denied(400, "malformed form") from None


def session_of(console: Console, request: Request) -> Session | None:
    return console.sessions.get(request.cookies.get(console.cookie))


def page(console: Console):
    """Wrap a GET handler: a live session or a redirect to the login page."""

    def wrap(fn: Callable[[Request, Session], Awaitable[Response]]):
        async def handler(request: Request) -> Response:
            session = session_of(console, request)
            if session is None:
                return RedirectResponse("/login", 303)
            try:
                return await fn(request, session)
            except StoreUnreadable as exc:  # PostgreSQL down: say so (no password in it)
                return render(request, "error.html", session, 503, why=str(exc))

        return handler

    return wrap


def action(console: Console, write: bool = True):
    """Wrap a POST handler: same origin, live session, CSRF token, write role."""

    def wrap(fn: Callable[[Request, Session, dict], Awaitable[Response]]):
        async def handler(request: Request) -> Response:
            session = session_of(console, request)
            try:
                if not same_origin(request):
                    raise Denied(403, "cross-site request refused")
                if session is None:
                    raise Denied(403, "not logged in, or the session expired")
                form = await read_form(request)
                token = (form.get("csrf") or [""])[0]
                if not hmac.compare_digest(token.encode(), session.csrf.encode()):
                    raise Denied(403, "missing or wrong CSRF token")
                if write and not session.operator.can_write:
                    raise Denied(403, f"{session.operator.name} is a read-only operator")
            except Denied as exc:
                who = session.operator.name if session else "nobody"
                log.warning("refused %s by %s: %s", request.url.path, who, exc)
                return render(request, "error.html", session, exc.status, why=str(exc))
            return await fn(request, session, {k: v for k, v in form.items() if k != "csrf"})

        return handler

    return wrap


async def blocking(fn, *args, **kw):
    """Run store reads, scrapes and gRPC calls off the event loop."""
    return await run_in_threadpool(fn, *args, **kw)


def scope_of(op: Operator, asked: str | None) -> str | None:
    """Return the scope a page shows: the operator's own, or the one an all-scope one asked."""
    if op.scope != "*":
        return op.scope
    return asked or None
