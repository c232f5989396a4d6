"""Input that once answered 500: deep or huge metadata, NUL characters, ids past 2^63, deep bodies.

Each answers 400 naming what is wrong and writes nothing; whatever is accepted is served back.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest

from services.gateway.jobs.validation import MAX_METADATA_BYTES, MAX_METADATA_DEPTH
from tests.gateway.support import submit_job, user_id

if TYPE_CHECKING:
    import asyncpg
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

    from tests.gateway.conftest import TokenFactory

SUBMIT = "/api/v1/downloads/download"
JOBS = "/api/v1/downloads/jobs"
URL = "http://127.0.0.1:9/a.bin"
JSON = {"Content-Type": "application/json"}


def _nested(levels: int) -> dict[str, Any]:
    """`levels` objects inside one another, the outermost counted."""
    value: dict[str, Any] = {"leaf": True}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def _deep_text(levels: int) -> str:
    # Built as text: encoding this deep a value would itself exhaust the stack.
    return '{"a":' * levels + "1" + "}" * levels


async def _nothing_written(pool: asyncpg.Pool) -> None:
    for table in ("jobs", "files", "outbox"):
        assert await pool.fetchval(f"SELECT count(*) FROM {table}") == 0, table


def _assert_400(response: Any, *named: str) -> None:
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    for name in named:
        assert name in detail, detail


async def test_metadata_as_deep_as_allowed_is_stored_and_served_back(
    client: AsyncTestClient[Litestar], auth: dict[str, str]
) -> None:
    metadata = _nested(MAX_METADATA_DEPTH)
    submitted = await client.post(SUBMIT, json={"urls": [URL], "metadata": metadata}, headers=auth)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]

    listing = await client.get(JOBS, headers=auth)
    status = await client.get(f"{JOBS}/{job_id}", headers=auth)

    assert listing.status_code == 200, listing.text
    assert listing.json()["jobs"][0]["metadata"] == metadata
    assert status.json()["metadata"] == metadata


@pytest.mark.parametrize(
    ("case", "body", "named"),
    [
        ("one level too deep", _nested(MAX_METADATA_DEPTH + 1), ("metadata", "32 levels")),
        ("deep in a list", {"a": [[[[_nested(MAX_METADATA_DEPTH)]]]]}, ("metadata", "levels")),
        ("too large", {"text": "x" * MAX_METADATA_BYTES}, ("metadata", str(MAX_METADATA_BYTES))),
        ("many small values", {"n": [0] * MAX_METADATA_BYTES}, ("metadata", "bytes")),
        ("NUL in a value", {"a": {"b": ["ok", "x\x00y"]}}, ("metadata.a.b[1]", "NUL")),
        ("NUL in a key", {"a": {"b\x00": 1}}, ("metadata.a", "NUL")),
    ],
)
async def test_metadata_that_could_not_be_stored_or_served_answers_400(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    case: str,
    body: dict[str, Any],
    named: tuple[str, ...],
) -> None:
    response = await client.post(SUBMIT, json={"urls": [URL], "metadata": body}, headers=auth)

    _assert_400(response, *named)
    await _nothing_written(pool)


async def test_a_body_nested_too_deep_to_decode_answers_400(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    body = '{"urls": ["' + URL + '"], "metadata": ' + _deep_text(5_000) + "}"

    response = await client.post(SUBMIT, content=body, headers={**auth, **JSON})

    _assert_400(response, "body", "metadata")
    await _nothing_written(pool)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"files": [{"url": URL, "filename": "a\x00.bin"}]}, "files[0].filename"),
        (
            {
                # The band name matches the URL's last segment once %00 is decoded.
                "urls": ["http://127.0.0.1:9/r%00.tif", "http://127.0.0.1:9/n.tif"],
                "composites": [{"kind": "ndvi", "bands": {"red": "r\x00.tif", "nir": "n.tif"}}],
            },
            "composites[0].bands.red",
        ),
    ],
)
async def test_nul_in_a_name_answers_400_naming_it(
    client: AsyncTestClient[Litestar],
    auth: dict[str, str],
    pool: asyncpg.Pool,
    body: dict[str, Any],
    named: str,
) -> None:
    response = await client.post(SUBMIT, json=body, headers=auth)

    _assert_400(response, named, "NUL")
    await _nothing_written(pool)


async def test_an_idempotency_key_with_control_characters_answers_400(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    response = await client.post(
        SUBMIT, json={"urls": [URL]}, headers={**auth, "Idempotency-Key": "key\x00"}
    )

    _assert_400(response, "Idempotency-Key")
    await _nothing_written(pool)


async def test_cancel_reasons_with_nul_or_deep_bodies_answer_400_and_cancel_nothing(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    owner = await user_id(pool, "alice")
    job_id, _ = await submit_job(pool, owner, files=1)
    export_cancel = f"/api/v1/downloads/exports/{uuid.uuid4()}/cancel"

    nul = await client.post(f"{JOBS}/{job_id}/cancel", json={"reason": "a\x00"}, headers=auth)
    deep = await client.post(
        f"{JOBS}/{job_id}/cancel",
        content='{"reason": ' + "[" * 5_000 + "]" * 5_000 + "}",
        headers={**auth, **JSON},
    )
    export_nul = await client.post(export_cancel, json={"reason": "\x00"}, headers=auth)

    _assert_400(nul, "reason", "NUL")
    _assert_400(deep, "body")
    _assert_400(export_nul, "reason", "NUL")
    assert await pool.fetchval("SELECT status FROM jobs WHERE id = $1", job_id) == "pending"


@pytest.mark.parametrize(
    "header", ["-1", "abc", "1.5", "0x10", "\u0663", str(2**63), "9" * 40, "1 2"]
)
async def test_a_bad_last_event_id_answers_400_before_the_stream_starts(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool, header: str
) -> None:
    job_id, _ = await submit_job(pool, await user_id(pool, "alice"), files=1)

    response = await client.get(
        f"{JOBS}/{job_id}/events", headers={**auth, "Last-Event-ID": header.encode()}
    )

    _assert_400(response, "Last-Event-ID")


@pytest.mark.parametrize("after", ["-1", "abc", str(2**63), str(2**64)])
async def test_a_bad_after_answers_400_before_the_stream_starts(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool, after: str
) -> None:
    job_id, _ = await submit_job(pool, await user_id(pool, "alice"), files=1)

    response = await client.get(f"{JOBS}/{job_id}/events", params={"after": after}, headers=auth)

    _assert_400(response, "after")


async def test_the_largest_event_id_is_accepted(
    client: AsyncTestClient[Litestar], auth: dict[str, str], pool: asyncpg.Pool
) -> None:
    job_id, _ = await submit_job(pool, await user_id(pool, "alice"), files=1)
    await pool.execute(
        "UPDATE jobs SET status = 'failed', finished_at = now() - interval '1 minute'"
        " WHERE id = $1",
        job_id,
    )

    response = await client.get(
        f"{JOBS}/{job_id}/events", headers={**auth, "Last-Event-ID": str(2**63 - 1)}
    )

    assert response.status_code == 200, response.text
    assert "event:" not in response.text  # nothing comes after the largest id


@pytest.mark.parametrize("path", [JOBS, "/api/v1/executions", "/api/v1/dead-letters"])
async def test_a_page_past_what_an_offset_can_hold_answers_400(
    client: AsyncTestClient[Litestar], make_auth: TokenFactory, path: str
) -> None:
    admin = await make_auth("root", admin=True)

    response = await client.get(path, params={"page": str(2**63)}, headers=admin)

    _assert_400(response, "page")
