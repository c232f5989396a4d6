"""Bearer tokens: 401 without a valid one, only the hash stored, users kept apart, admin guard."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
from litestar.exceptions import PermissionDeniedException

from services.gateway.auth import User, admin_guard, create_token
from shared.ids import UserId

if TYPE_CHECKING:
    import asyncpg
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

JOBS = "/api/v1/downloads/jobs"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer dl_not-a-real-token"},
    ],
    ids=["none", "empty", "basic", "unknown"],
)
async def test_api_answers_401_without_a_valid_token(
    client: AsyncTestClient[Litestar], headers: dict[str, str]
) -> None:
    response = await client.get(JOBS, headers=headers)

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.json()["status_code"] == 401
    assert "token" in response.json()["detail"]
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_every_api_route_needs_a_token(client: AsyncTestClient[Litestar]) -> None:
    some_id = "00000000-0000-4000-8000-000000000000"
    calls = [
        ("POST", "/api/v1/downloads/download", {"urls": ["http://127.0.0.1/a"]}),
        ("GET", f"{JOBS}/{some_id}", None),
        ("GET", f"{JOBS}/{some_id}/result", None),
        ("POST", f"{JOBS}/{some_id}/cancel", None),
        ("GET", f"/api/v1/downloads/files/{some_id}", None),
        ("GET", "/api/v1/dead-letters", None),
        ("POST", "/api/v1/dead-letters/1-0/retry", None),
    ]
    for method, path, body in calls:
        response = await client.request(method, path, json=body)
        assert response.status_code == 401, (method, path)


async def test_a_valid_token_is_accepted(
    client: AsyncTestClient[Litestar], auth: dict[str, str]
) -> None:
    response = await client.get(JOBS, headers=auth)

    assert response.status_code == 200
    assert response.json() == {"jobs": [], "page": 1, "per_page": 20, "total": 0}


async def test_only_the_hash_of_a_token_is_stored(pool: asyncpg.Pool) -> None:
    token = await create_token(pool, "carol", admin=False)

    assert token.startswith("dl_")
    assert len(token) > 40
    rows = await pool.fetch("SELECT token_hash, user_id FROM api_tokens")
    assert [bytes(r["token_hash"]) for r in rows] == [hashlib.sha256(token.encode()).digest()]
    dump = await pool.fetchval("SELECT string_agg(t::text, ' ') FROM api_tokens t")
    assert token not in dump


async def test_create_token_creates_the_user_once_and_sets_the_admin_flag(
    pool: asyncpg.Pool,
) -> None:
    first = await create_token(pool, "dave", admin=False)
    second = await create_token(pool, "dave", admin=True)

    assert first != second
    users = await pool.fetch("SELECT id, is_admin FROM users WHERE name = 'dave'")
    assert len(users) == 1
    assert users[0]["is_admin"] is True
    assert await pool.fetchval("SELECT count(*) FROM api_tokens") == 2


async def test_a_revoked_token_is_refused(
    client: AsyncTestClient[Litestar], pool: asyncpg.Pool
) -> None:
    token = await create_token(pool, "erin", admin=False)
    await pool.execute("UPDATE api_tokens SET revoked_at = now()")

    response = await client.get(JOBS, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401


def _connection(user: Any) -> Any:
    return SimpleNamespace(user=user)


def test_admin_guard_lets_admins_through() -> None:
    admin = User(id=UserId("u1"), name="root", is_admin=True)

    admin_guard(_connection(admin), None)  # type: ignore[arg-type]


def test_admin_guard_refuses_everyone_else() -> None:
    user = User(id=UserId("u2"), name="alice", is_admin=False)

    with pytest.raises(PermissionDeniedException):
        admin_guard(_connection(user), None)  # type: ignore[arg-type]
    with pytest.raises(PermissionDeniedException):
        admin_guard(_connection(None), None)  # type: ignore[arg-type]
