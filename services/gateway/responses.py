"""What every route answers besides success: `ErrorBody`, the error statuses each route
documents in OpenAPI (`responses=` of a handler), and the bounds of a page of a listing.

A route lists the statuses it can give, so the document tells clients what they get (and
schemathesis holds the gateway to it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Controller, Response, route
from litestar.enums import HttpMethod
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import HeaderParameter, QueryParameter

if TYPE_CHECKING:
    from collections.abc import Mapping

# Listing offsets are PostgreSQL bigints and Redis counts; no one pages this far.
MAX_PAGE = 1_000_000
PageNumber = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)]
PerPage = Annotated[int, QueryParameter(ge=1, le=100)]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        min_length=1,
        max_length=255,
        # Stored in a text column: NUL is refused there, control characters are noise.
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="same key, same user: what the first request made is returned",
    ),
]

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


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Every error answer: the status again and a message that names the offending field."""

    status_code: int
    detail: str
    extra: list[dict[str, Any]] | dict[str, Any] | None = None


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


def allow_methods(path: str, allow: str) -> HTTPRouteHandler:
    """An OPTIONS handler for a controller's `path` naming all its methods (`allow`):
    Litestar 2.25's own answer names only one handler's method on a path two handlers share."""

    async def allowed_methods(self: Controller) -> Response[None]:
        return Response(None, status_code=204, headers={"Allow": allow})

    handler: HTTPRouteHandler = route(
        path, http_method=HttpMethod.OPTIONS, include_in_schema=False
    )(allowed_methods)
    return handler
