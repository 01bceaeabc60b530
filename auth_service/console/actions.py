"""The console's actions: each one AdminService call naming the operator; login and logout."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from auth_service.authz import DEFAULT_SCOPE
from auth_service.console.app import (
    Console,
    Denied,
    action,
    blocking,
    read_form,
    render,
    same_origin,
    session_of,
)
from auth_service.console.auth import Session
from auth_service.console.backend import ActionError

log = logging.getLogger(__name__)


def _one(form: dict, name: str) -> str:
    return (form.get(name) or [""])[0].strip()


def _check_scope(session: Session, scope: str | None, what: str) -> None:
    if scope is not None and not session.operator.sees(scope):
        raise Denied(403, f"{what} is outside your scope {session.operator.scope!r}")


def routes(c: Console) -> list[Route]:
    """Return the POST routes of the actions, bound to ``c``."""
    r = c.reader

    async def act(s: Session, back: str, done: str, fn, *args) -> Response:
        try:
            await blocking(fn, s.operator.name, *args)
        except ActionError as exc:
            s.flash.append(("error", str(exc)))
            return RedirectResponse(back, 303)
        log.info("%s: %s", s.operator.name, done)
        s.flash.append(("ok", done))
        return RedirectResponse(back, 303)

    async def guarded(request: Request, s: Session, fn) -> Response:
        try:
            return await fn()
        except Denied as exc:
            return render(request, "error.html", s, exc.status, why=str(exc))

    @action(c)
    async def register_device(request: Request, s: Session, form: dict) -> Response:
        async def run() -> Response:
            device, scope = _one(form, "device_id"), _one(form, "scope") or DEFAULT_SCOPE
            _check_scope(s, scope, f"scope {scope!r}")
            _check_scope(s, await blocking(r.device_scope, device), f"device {device!r}")
            key = _one(form, "verify_key")
            done = f"registered {device} in scope {scope}"
            return await act(s, "/devices", done, c.admin.register_device, device, key, scope)

        return await guarded(request, s, run)

    @action(c)
    async def unregister_device(request: Request, s: Session, form: dict) -> Response:
        async def run() -> Response:
            device = _one(form, "device_id")
            _check_scope(s, await blocking(r.device_scope, device), f"device {device!r}")
            return await act(
                s, "/devices", f"unregistered {device}", c.admin.unregister_device, device
            )

        return await guarded(request, s, run)

    @action(c)
    async def create_token(request: Request, s: Session, form: dict) -> Response:
        async def run() -> Response:
            app, scope = _one(form, "app_name"), _one(form, "scope") or DEFAULT_SCOPE
            _check_scope(s, scope, f"scope {scope!r}")
            _check_scope(s, await blocking(r.token_scope, app), f"app {app!r}")
            devs = [d for d in _one(form, "devices").replace(",", " ").split() if d]
            methods = [m for m in form.get("method", []) if m]
            shared = _one(form, "shared") == "yes"
            try:
                who = s.operator.name
                token = await blocking(c.admin.create_token, who, app, scope, devs, methods, shared)
            except ActionError as exc:
                s.flash.append(("error", str(exc)))
                return RedirectResponse("/tokens", 303)
            log.info("%s: created the token of %s", s.operator.name, app)
            return render(request, "token_created.html", s, app=app, token=token, scope=scope)

        return await guarded(request, s, run)

    @action(c)
    async def revoke_token(request: Request, s: Session, form: dict) -> Response:
        async def run() -> Response:
            app = _one(form, "app_name")
            _check_scope(s, await blocking(r.token_scope, app), f"app {app!r}")
            done = f"revoked the token of {app}"
            return await act(s, "/tokens", done, c.admin.revoke_token, app)

        return await guarded(request, s, run)

    @action(c)
    async def clear_lockout(request: Request, s: Session, form: dict) -> Response:
        async def run() -> Response:
            key = (form.get("key") or [""])[0]
            rows = {x["key"]: x for x in await blocking(r.lockouts, c.budgets)}
            if key not in rows:
                raise Denied(404, "no such lock-out (it may have expired)")
            _check_scope(s, rows[key]["scope"], rows[key]["what"])
            done = f"cleared the lock-out of {rows[key]['what']}"
            return await act(s, "/lockouts", done, c.admin.clear_budget, key)

        return await guarded(request, s, run)

    return [
        Route("/devices/register", register_device, methods=["POST"]),
        Route("/devices/unregister", unregister_device, methods=["POST"]),
        Route("/tokens/create", create_token, methods=["POST"]),
        Route("/tokens/revoke", revoke_token, methods=["POST"]),
        Route("/lockouts/clear", clear_lockout, methods=["POST"]),
    ]


def login_page(c: Console):
    async def handler(request: Request) -> Response:
        if session_of(c, request) is not None:
            return RedirectResponse("/", 303)
        return render(request, "login.html", None, error="")

    return handler


def login(c: Console):
    async def handler(request: Request) -> Response:
        client = request.client.host if request.client else "?"
        if not same_origin(request):
            return render(request, "login.html", None, 403, error="cross-site login refused")
        wait = c.limiter.wait(client)
        if wait > 0:
            resp = render(request, "login.html", None, 429, error="too many failed logins")
            resp.headers["retry-after"] = str(int(wait) + 1)
            return resp
        try:
            form = await read_form(request)
        except Denied as exc:
            return render(request, "login.html", None, exc.status, error=str(exc))
        op = c.directory.login((form.get("token") or [""])[0].strip())
        if op is None:
            c.limiter.failed(client)
            log.warning("failed console login from %s", client)
            return render(request, "login.html", None, 401, error="unknown token")
        c.sessions.drop(request.cookies.get(c.cookie))  # never keep an id from before login
        sid, _ = c.sessions.create(op)
        log.info("console login: %s (%s, scope %s) from %s", op.name, op.role, op.scope, client)
        resp = RedirectResponse("/", 303)
        resp.set_cookie(
            c.cookie,
            sid,
            max_age=int(c.sessions.max_s),
            path="/",
            secure=c.tls,
            httponly=True,
            samesite="strict",
        )
        return resp

    return handler


def logout(c: Console):
    @action(c, write=False)
    async def handler(request: Request, s: Session, form: dict) -> Response:
        c.sessions.drop(request.cookies.get(c.cookie))
        resp = RedirectResponse("/login", 303)
        resp.delete_cookie(c.cookie, path="/", secure=c.tls, httponly=True, samesite="strict")
        return resp

    return handler
