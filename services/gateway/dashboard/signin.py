"""/dashboard/login, /sessions and /logout: a pasted API token opens a session, logout ends it."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from asyncpg import Pool
from litestar import Controller, Request, get, post
from litestar.datastructures import Cookie, State
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template

from services.gateway.dashboard.sessions import (
    COOKIE_PATH,
    SESSION_COOKIE,
    SESSION_TTL_S,
    DashboardSession,
    checked_form,
    close_session,
    open_session,
)

log = logging.getLogger(__name__)

FormBody = Annotated[dict[str, Any], Body(media_type=RequestEncodingType.URL_ENCODED)]


def _session_cookie(request: Request[Any, Any, State], value: str, max_age: int) -> Cookie:
    return Cookie(
        key=SESSION_COOKIE,
        value=value,
        path=COOKIE_PATH,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        # Browsers drop Secure cookies on plain http (the loopback case): only mark it on https.
        secure=request.url.scheme == "https",
    )


class SignInController(Controller):
    """Signing in with an API token and out again."""

    path = "/"

    @get("/login")
    async def login_page(self) -> Template:
        return Template("login.html", context={"error": None})

    # Not POST /login: Litestar 2.25's OPTIONS answer names one method of a shared path only.
    @post("/sessions", status_code=303)
    async def login(
        self, *, request: Request[Any, Any, State], data: FormBody, pool: NamedDependency[Pool]
    ) -> Redirect | Template:
        """Open a session for a valid token; the login page again, with 401, for any other."""
        token = str(data.get("token") or "")
        value = await open_session(pool, token) if token.strip() else None
        if value is None:
            return Template(
                "login.html",
                context={"error": "token: invalid or revoked"},
                status_code=401,
            )
        log.info("dashboard session opened")
        return Redirect(
            "/dashboard", status_code=303, cookies=[_session_cookie(request, value, SESSION_TTL_S)]
        )

    @post("/logout", status_code=303)
    async def logout(
        self,
        *,
        request: Request[Any, Any, State],
        session: NamedDependency[DashboardSession],
        pool: NamedDependency[Pool],
    ) -> Redirect:
        await checked_form(request, session)
        await close_session(pool, session)
        return Redirect(
            "/dashboard/login", status_code=303, cookies=[_session_cookie(request, "", 0)]
        )
