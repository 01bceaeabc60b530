"""The console's ASGI app: its pages, its actions and its static files behind the headers."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from auth_service.console import actions, views
from auth_service.console.app import HERE, Console, Headers


def build_app(console: Console) -> Starlette:
    """Return the ASGI app of the console."""
    routes = [
        Route("/login", actions.login_page(console), methods=["GET"]),
        Route("/login", actions.login(console), methods=["POST"]),
        Route("/logout", actions.logout(console), methods=["POST"]),
        *views.routes(console),
        *actions.routes(console),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Headers(Starlette(routes=routes), console.tls)
