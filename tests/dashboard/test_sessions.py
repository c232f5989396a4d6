"""Dashboard sessions on real PostgreSQL: opened by a valid token only, ended by logout, by
expiry and by revoking the token they were opened with; only a hash of the cookie is kept."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import pytest
from litestar.exceptions import PermissionDeniedException

from services.gateway.auth import create_token
from services.gateway.dashboard.sessions import (
    CSRF_FIELD,
    DashboardSession,
    check_token,
    close_session,
    open_session,
    session_for,
)
from shared.postgres import open_pool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import asyncpg


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(database_url) as opened:
        yield opened


async def _signed_in(pool: asyncpg.Pool, name: str = "erin") -> tuple[str, str, DashboardSession]:
    token = await create_token(pool, name, admin=False)
    value = await open_session(pool, token)
    assert value is not None
    session = await session_for(pool, value)
    assert session is not None
    return token, value, session


async def test_a_valid_token_opens_a_session_of_its_user(pool: asyncpg.Pool) -> None:
    _, value, session = await _signed_in(pool)

    assert session.user.name == "erin"
    assert not session.user.is_admin
    stored = await pool.fetch("SELECT session_hash FROM dashboard_sessions")
    assert [bytes(row["session_hash"]) for row in stored] == [
        hashlib.sha256(value.encode()).digest()
    ]


async def test_an_unknown_token_opens_nothing(pool: asyncpg.Pool) -> None:
    assert await open_session(pool, "dl_nobody") is None
    assert await pool.fetchval("SELECT count(*) FROM dashboard_sessions") == 0
    assert await session_for(pool, "made-up") is None


async def test_logout_expiry_and_a_revoked_token_each_end_the_session(
    pool: asyncpg.Pool,
) -> None:
    _, value, session = await _signed_in(pool, "ann")
    await close_session(pool, session)
    assert await session_for(pool, value) is None

    _, value, _ = await _signed_in(pool, "ben")
    await pool.execute("UPDATE dashboard_sessions SET expires_at = now() - interval '1 s'")
    assert await session_for(pool, value) is None

    token, value, _ = await _signed_in(pool, "cat")
    await pool.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE token_hash = $1",
        hashlib.sha256(token.encode()).digest(),
    )
    assert await session_for(pool, value) is None


async def test_each_session_has_its_own_csrf_token(pool: asyncpg.Pool) -> None:
    _, _, first = await _signed_in(pool, "dan")
    _, _, second = await _signed_in(pool, "dan")

    assert first.csrf_token != second.csrf_token
    check_token(first, {CSRF_FIELD: first.csrf_token})
    for form in ({}, {CSRF_FIELD: ""}, {CSRF_FIELD: second.csrf_token}):
        with pytest.raises(PermissionDeniedException, match=CSRF_FIELD):
            check_token(first, form)
