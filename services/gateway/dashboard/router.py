"""The dashboard's wiring: its router (controllers, session dependency, HTML errors), templates
and static files. app.py mounts `dashboard_router()` and `TEMPLATE_CONFIG`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from litestar import Request, Response, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig

from services.gateway.dashboard.actions import DownloadsLinkController, JobActionsController
from services.gateway.dashboard.admin import (
    DeadLettersScreenController,
    QueuesScreenController,
    WorkersScreenController,
)
from services.gateway.dashboard.assets import StaticController
from services.gateway.dashboard.bulk import BulkActionsController
from services.gateway.dashboard.jobs import DashboardJobsController
from services.gateway.dashboard.overview import OverviewController
from services.gateway.dashboard.schedules import DashboardSchedulesController
from services.gateway.dashboard.sessions import SignInRequired, provide_session
from services.gateway.dashboard.signin import SignInController
from services.gateway.dashboard.tasks import DashboardTasksController
from services.gateway.dashboard.units import FILTERS
from services.gateway.dashboard.workflows import DashboardWorkflowsController
from services.gateway.errors import GatewayError

log = logging.getLogger(__name__)

_HERE = Path(__file__).parent


def _add_filters(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters.update(FILTERS)


TEMPLATE_CONFIG = TemplateConfig(
    directory=_HERE / "templates", engine=JinjaTemplateEngine, engine_callback=_add_filters
)


def dashboard_router() -> Router:
    """Every /dashboard route; all but the login page need a signed-in session."""
    return Router(
        path="/dashboard",
        route_handlers=[
            SignInController,
            OverviewController,
            DashboardJobsController,
            JobActionsController,
            BulkActionsController,
            DownloadsLinkController,
            DashboardTasksController,
            DashboardWorkflowsController,
            DashboardSchedulesController,
            QueuesScreenController,
            WorkersScreenController,
            DeadLettersScreenController,
            StaticController,
        ],
        # Resolved only by the handlers that name `session`: the login page does not.
        dependencies={"session": Provide(provide_session)},
        exception_handlers={
            SignInRequired: _to_login,
            GatewayError: _error_page,
            HTTPException: _error_page,
        },
        include_in_schema=False,
    )


def _to_login(_: Request[Any, Any, State], __: SignInRequired) -> Response[Any]:
    return Redirect("/dashboard/login", status_code=303)


def _error_page(request: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    """A readable page for the errors a person can cause (a 404, a 403, a bad filter)."""
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", None) or str(exc)
    if status >= 500:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        if not isinstance(exc, GatewayError):  # its message is written for people; others not
            detail = "internal server error"
    return Template("error.html", context={"status": status, "detail": detail}, status_code=status)
