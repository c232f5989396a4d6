"""Dashboard sign-in: a session per browser, opened with an API token, kept in PostgreSQL.

The cookie holds a random value whose SHA-256 is the row's key; each session has its own CSRF
token that every form POST must send back. Logging out deletes the row; revoking the API token
the person signed in with ends every session it opened (migration 0013).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.exceptions import PermissionDeniedException

from services.gateway.auth import User, hash_token, user_for_token
from services.gateway.resources import resources_of
from shared.ids import UserId

if TYPE_CHECKING:
    from collections.abc import Mapping

    import asyncpg
    from litestar import Request
    from litestar.datastructures import FormMultiDict, State

SESSION_COOKIE = "downlink_session"
COOKIE_PATH = "/dashboard"
CSRF_FIELD = "csrf_token"
SESSION_TTL_S = 12 * 3600


class SignInRequired(Exception):
    """No valid session cookie: the dashboard answers with a redirect to its login page."""


class DashboardSession(msgspec.Struct, frozen=True, kw_only=True):
    """The signed-in person of one browser and what their forms must carry."""

    user: User
    csrf_token: str
    session_hash: bytes


def _hash(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


async def open_session(pool: asyncpg.Pool, token: str) -> str | None:
    """A new session for the owner of `token` and the cookie value naming it; None if invalid."""
    token_hash = hash_token(token.strip())
    if await user_for_token(pool, token_hash) is None:
        return None
    value = secrets.token_urlsafe(32)
    async with pool.acquire() as connection, connection.transaction():
        # Expired rows are swept here, so the table stays as small as the live sessions.
        await connection.execute("DELETE FROM dashboard_sessions WHERE expires_at < now()")
        await connection.execute(
            "INSERT INTO dashboard_sessions (session_hash, token_hash, csrf_token, expires_at)"
            " VALUES ($1, $2, $3, now() + $4::interval)",
            _hash(value),
            token_hash,
            secrets.token_urlsafe(32),
            timedelta(seconds=SESSION_TTL_S),
        )
    return value


async def session_for(pool: asyncpg.Pool, value: str) -> DashboardSession | None:
    """The live session the cookie value names, if its token is still valid."""
    session_hash = _hash(value)
    row = await pool.fetchrow(
        "SELECT u.id, u.name, u.is_admin, s.csrf_token FROM dashboard_sessions s"
        " JOIN api_tokens t ON t.token_hash = s.token_hash"
        " JOIN users u ON u.id = t.user_id"
        " WHERE s.session_hash = $1 AND s.expires_at > now() AND t.revoked_at IS NULL",
        session_hash,
    )
    if row is None:
        return None
    user = User(id=UserId(str(row["id"])), name=row["name"], is_admin=row["is_admin"])
    return DashboardSession(user=user, csrf_token=row["csrf_token"], session_hash=session_hash)


async def close_session(pool: asyncpg.Pool, session: DashboardSession) -> None:
    await pool.execute(
        "DELETE FROM dashboard_sessions WHERE session_hash = $1", session.session_hash
    )


def check_token(session: DashboardSession, form: Mapping[str, Any]) -> None:
    """Refuse (403) a form that does not carry the session's CSRF token."""
    sent = form.get(CSRF_FIELD)
    if not isinstance(sent, str) or not secrets.compare_digest(sent, session.csrf_token):
        raise PermissionDeniedException(f"{CSRF_FIELD}: missing or wrong; reload the page")


async def checked_form(
    request: Request[Any, Any, State], session: DashboardSession
) -> FormMultiDict:
    """The posted form, once it proved to carry the session's CSRF token (403 otherwise)."""
    form = await request.form()
    check_token(session, form)
    return form


async def provide_session(request: Request[Any, Any, State]) -> DashboardSession:
    """The session of the request's cookie; SignInRequired (a redirect) without one."""
    value = request.cookies.get(SESSION_COOKIE)
    if not value:
        raise SignInRequired
    session = await session_for(resources_of(request.app.state).pool, value)
    if session is None:
        raise SignInRequired
    return session
