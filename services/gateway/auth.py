"""Users and bearer tokens: creating them, authenticating every /api/v1 request, the admin guard.

Only the SHA-256 of a token is stored, so a leaked database does not leak working tokens.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from services.gateway.resources import resources_of
from shared.ids import UserId

if TYPE_CHECKING:
    import asyncpg
    from litestar import Request
    from litestar.connection import ASGIConnection
    from litestar.datastructures import State
    from litestar.handlers import BaseRouteHandler

TOKEN_PREFIX = "dl_"  # noqa: S105 - a prefix, not a secret
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="downlink"'}


class User(msgspec.Struct, frozen=True, kw_only=True):
    """The caller behind a bearer token."""

    id: UserId
    name: str
    is_admin: bool


async def save_token(pool: asyncpg.Pool, name: str, *, admin: bool, token_hash: bytes) -> UserId:
    """Create the user `name` if missing (setting its admin flag either way) and add a token."""
    async with pool.acquire() as connection, connection.transaction():
        user_id = await connection.fetchval(
            "INSERT INTO users (id, name, is_admin) VALUES ($1, $2, $3)"
            " ON CONFLICT (name) DO UPDATE SET is_admin = EXCLUDED.is_admin"
            " RETURNING id",
            uuid.uuid4(),
            name,
            admin,
        )
        await connection.execute(
            "INSERT INTO api_tokens (token_hash, user_id) VALUES ($1, $2)", token_hash, user_id
        )
    return UserId(str(user_id))


async def user_for_token(pool: asyncpg.Pool, token_hash: bytes) -> User | None:
    row = await pool.fetchrow(
        "SELECT u.id, u.name, u.is_admin FROM api_tokens t JOIN users u ON u.id = t.user_id"
        " WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
        token_hash,
    )
    if row is None:
        return None
    return User(id=UserId(str(row["id"])), name=row["name"], is_admin=row["is_admin"])


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_token(pool: asyncpg.Pool, name: str, *, admin: bool) -> str:
    """Create the user `name` if missing (its admin flag set to `admin`) and return a new token."""
    if not name.strip():
        raise ValueError("a user name must not be empty")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    await save_token(pool, name.strip(), admin=admin, token_hash=hash_token(token))
    return token


class BearerTokenMiddleware(AbstractAuthenticationMiddleware):
    """Resolves `Authorization: Bearer TOKEN` to a `User`; anything else answers 401."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise NotAuthorizedException(
                "missing bearer token: send `Authorization: Bearer TOKEN`", headers=_CHALLENGE
            )
        pool = resources_of(connection.app.state).pool
        user = await user_for_token(pool, hash_token(token))
        if user is None:
            raise NotAuthorizedException("invalid or revoked token", headers=_CHALLENGE)
        return AuthenticationResult(user=user, auth=token)


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Lets only admins through (403 for everyone else)."""
    user = connection.user
    if not isinstance(user, User) or not user.is_admin:
        raise PermissionDeniedException("this route is for admins")


def provide_user(request: Request[User, str, State]) -> User:
    """The authenticated caller (the middleware has already refused anyone else)."""
    return request.user
