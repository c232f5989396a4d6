"""HTTP server spans named `{method} {route template}` (OpenTelemetry's HTTP conventions).

Litestar's OpenTelemetry middleware wraps the whole app, so it starts the span before routing
and can only see the raw path, one span name per job id. The span therefore starts as the bare
method, and is renamed, with `http.route` set, once the router has found the route's template.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar.plugins import InitPlugin
from opentelemetry import trace
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE
from opentelemetry.util.http import sanitize_method

if TYPE_CHECKING:
    from litestar.config.app import AppConfig
    from litestar.types import ASGIApp, Receive, Scope, Send


def initial_span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """The name a server span starts with: its method alone, never the path.

    Unmatched paths keep this name, so random 404 paths cannot mint span names.
    """
    return _method(scope), {}


class RouteSpanNames(InitPlugin):
    """Renames the request's server span after its route once routing has found one."""

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        # First of the route's middleware: a request an inner one refuses (401) is named too.
        app_config.middleware.insert(0, _name_span_by_route)
        return app_config


def _name_span_by_route(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        # Set by Litestar's router before a route's middleware runs: `/jobs/{job_id}`, no type.
        template = scope.get("path_template")
        span = trace.get_current_span()
        if template and span.is_recording():
            span.update_name(f"{_method(scope)} {template}")
            span.set_attribute(HTTP_ROUTE, template)
        await app(scope, receive, send)

    return middleware


def _method(scope: Scope) -> str:
    method = sanitize_method(str(scope.get("method", "")).strip())
    # As OpenTelemetry's ASGI default does: a made-up method must not mint names either.
    return "HTTP" if method in ("", "_OTHER") else method
