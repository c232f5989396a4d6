"""Every route of the app answers OPTIONS (and HEAD where it has GET) without a server error."""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING

from litestar.routes import HTTPRoute

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

    from tests.gateway.conftest import TokenFactory

_PARAMETER = re.compile(r"\{(\w+):(\w+)\}")


def _concrete(path: str) -> str:
    """`path` with each `{name:type}` filled in with a value of that type."""
    return _PARAMETER.sub(lambda m: str(uuid.uuid4()) if m[2] == "uuid" else "0-1", path)


async def test_every_route_answers_options_and_head_without_a_server_error(
    app: Litestar, client: AsyncTestClient[Litestar], make_auth: TokenFactory
) -> None:
    callers = {
        "anonymous": {},
        "user": await make_auth("alice"),
        "admin": await make_auth("root", admin=True),
    }
    routes = [route for route in app.routes if isinstance(route, HTTPRoute)]
    assert len(routes) > 20, "the walk found too few routes to be the whole app"
    failures = []
    for route in routes:
        path = _concrete(route.path)
        methods = ["OPTIONS", *(["HEAD"] if "GET" in route.methods else [])]
        for caller, headers in callers.items():
            for method in methods:
                response = await client.request(method, path, headers=headers)
                if response.status_code >= 500:
                    failures.append(f"{method} {path} as {caller}: {response.status_code}")
                elif method == "OPTIONS":
                    # The answer a client asks OPTIONS for: which methods the route takes.
                    allowed = set(response.headers.get("allow", "").replace(" ", "").split(","))
                    assert response.status_code == 204, (path, caller, response.text)
                    assert route.methods <= allowed, (path, allowed)
    assert not failures, "\n".join(failures)
