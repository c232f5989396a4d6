"""The answers besides success that each route documents in OpenAPI (`responses=` of a handler).

Every error answer is an `ErrorBody`; a route lists the statuses it can give, so the document
tells clients what they get (and schemathesis holds the gateway to it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar.openapi import ResponseSpec

from services.gateway.schemas import ErrorBody

if TYPE_CHECKING:
    from collections.abc import Mapping

_MEANINGS = {
    400: "a parameter, header or body field is malformed; `detail` names it, nothing is written",
    401: "no bearer token, or an invalid or revoked one (with WWW-Authenticate)",
    403: "not allowed to the caller",
    404: "nothing by that id belongs to the caller (another user's ids answer the same)",
    409: "the resource is in a state that does not allow this",
    413: "the request body is too large",
    416: "the Range lies outside the stored bytes (with Content-Range: bytes */SIZE)",
    503: "PostgreSQL or Redis is unavailable; try again after Retry-After seconds",
}
PARTIAL = ResponseSpec(
    data_container=None,
    description="the single byte range asked for with `Range` (with Content-Range)",
    media_type="application/octet-stream",
)


def errors(*codes: int, meaning: Mapping[int, str] | None = None) -> dict[int, ResponseSpec]:
    """OpenAPI responses for a route's error statuses; `meaning` words some for this route.

    Every route under /api/v1 also answers 401 and 503, which are added here.
    """
    meanings = {**_MEANINGS, **(meaning or {})}
    return {
        code: ResponseSpec(
            data_container=ErrorBody, description=meanings[code], generate_examples=False
        )
        for code in sorted({*codes, 401, 503})
    }
