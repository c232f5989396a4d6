"""Wiring of the gateway: `create_app(settings)`, its lifespan, the error-to-HTTP map, `serve()`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvicorn
from asyncpg import Pool
from faststream.redis import RedisBroker
from litestar import Litestar, Request, Response, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.gateway import resources
from services.gateway.auth import BearerTokenMiddleware, User, provide_user
from services.gateway.dashboard.router import TEMPLATE_CONFIG, dashboard_router
from services.gateway.dead_letters.controller import AdminController
from services.gateway.errors import GatewayError, InvalidRequest
from services.gateway.executions.controller import MetricsController, OperationsController
from services.gateway.exports.controller import ExportsController
from services.gateway.exports.queries import ExportRepository
from services.gateway.jobs.controller import DownloadsController
from services.gateway.jobs.queries import JobRepository
from services.gateway.jobs.validation import MAX_METADATA_DEPTH
from services.gateway.live import draining
from services.gateway.outbox import OutboxRelay
from services.gateway.queues_purge import QueuesController
from services.gateway.reconciler import Reconciler
from services.gateway.responses import ErrorBody
from services.gateway.retries.controller import RetriesController
from services.gateway.schedules.controller import SchedulesController
from services.gateway.schedules.scheduler import Scheduler
from services.gateway.span_names import RouteSpanNames, initial_span_details
from services.gateway.system import SystemController
from services.gateway.tasks.controller import TasksController, TaskTypesController
from services.gateway.tasks.errors import TASK_TYPE_STATUS
from services.gateway.tasks.retention import purge_ended_tasks
from services.gateway.tracker import Tracker
from services.gateway.workflows.controller import WorkflowsController
from shared.broker import create_broker
from shared.consumer import ensure_groups
from shared.postgres import DATABASE_DOWN, open_pool
from shared.redis_client import open_redis
from shared.settings import Settings
from shared.storage import Storage, open_storage
from shared.streams import GROUPS, consumer_name
from shared.task_types import TaskTypeError
from shared.telemetry import create_tracer_provider
from shared.workers import worker_presence

if TYPE_CHECKING:
    from types import FrameType

    from litestar.plugins import PluginProtocol
    from litestar.types import ExceptionHandlersMap
    from opentelemetry.trace import TracerProvider


log = logging.getLogger(__name__)

API_VERSION = "1.0.0"
POOL_MAX_SIZE = 20
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
_BEARER = "BearerToken"
_STARTUP_OUTAGES: tuple[type[BaseException], ...] = (*DATABASE_DOWN, OSError)
# The names the providers' and handlers' annotations use, which Litestar resolves at startup.
_SIGNATURE_NAMESPACE = {
    cls.__name__: cls
    for cls in (
        ExportRepository,
        JobRepository,
        OutboxRelay,
        Pool,
        Redis,
        RedisBroker,
        Settings,
        State,
        Storage,
        User,
    )
}

_OPENAPI = OpenAPIConfig(
    title="Downlink",
    version=API_VERSION,
    path="/schema",
    description="Bulk downloads over Redis Streams; see DESIGN.md for the guarantees.",
    components=Components(
        security_schemes={
            _BEARER: SecurityScheme(
                type="http",
                scheme="bearer",
                description="a token from `downlink token create NAME`",
            )
        }
    ),
)


def create_app(settings: Settings, *, tracer_provider: TracerProvider | None = None) -> Litestar:
    """The gateway application; nothing is opened until its lifespan starts."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with _open_resources(settings, tracer_provider) as opened:
            resources.install(app.state, opened.resources)
            try:
                async with _running(opened.loops, grace_s=settings.shutdown_grace_s + 5):
                    yield
            finally:
                resources.uninstall(app.state)

    api = Router(
        path="/api/v1",
        route_handlers=[
            DownloadsController,
            ExportsController,
            AdminController,
            OperationsController,
            TasksController,
            TaskTypesController,
            SchedulesController,
            WorkflowsController,
            QueuesController,
            RetriesController,
        ],
        middleware=[DefineMiddleware(BearerTokenMiddleware)],
        dependencies={"current_user": Provide(provide_user, sync_to_thread=False)},
        security=[{_BEARER: []}],
    )
    return Litestar(
        route_handlers=[SystemController, MetricsController, api, dashboard_router()],
        # Declared once for every controller, /health and /metrics included: each handler
        # names the resources it takes.
        dependencies=resources.PROVIDERS,
        signature_namespace=_SIGNATURE_NAMESPACE,
        lifespan=[lifespan],
        exception_handlers=_error_map(),
        request_class=_BoundedRequest,
        openapi_config=_OPENAPI,
        template_config=TEMPLATE_CONFIG,
        plugins=_telemetry_plugins(tracer_provider),
        # The CLI configures logging (JSON lines); Litestar must not install its own.
        logging_config=None,
    )


async def serve(settings: Settings) -> None:
    """Run the gateway with uvicorn until SIGINT/SIGTERM (`downlink gateway`)."""
    tracer_provider = create_tracer_provider("gateway")
    try:
        app = create_app(settings, tracer_provider=tracer_provider)
        config = uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            # Long responses (a large file, an event stream) get the grace period, then end.
            timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_grace_s)),
        )
        server = _Server(config, draining=draining(app.state))
        log.info("gateway listening on http://%s:%d", settings.http_host, settings.http_port)
        serving = asyncio.ensure_future(server.serve())
        try:
            await asyncio.shield(serving)
        except asyncio.CancelledError:
            # Cancelled by a supervisor: shut down as on SIGTERM, so the lifespan closes the
            # pool, the broker and the background loops instead of leaking them.
            server.should_exit = True
            draining(app.state).set()
            await serving
            raise
    finally:
        tracer_provider.shutdown()


class _Server(uvicorn.Server):
    """uvicorn, telling open event streams to end the moment a shutdown begins."""

    def __init__(self, config: uvicorn.Config, *, draining: asyncio.Event) -> None:
        super().__init__(config)
        self._draining = draining

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._draining.set()
        super().handle_exit(sig, frame)


# --- lifespan -------------------------------------------------------------------------------

Loop = tuple[Callable[[], Coroutine[Any, Any, None]], Callable[[], None]]


@dataclass(frozen=True, slots=True)
class _Opened:
    """What the lifespan opened: the resources handlers use and the loops to run beside them."""

    resources: resources.Resources
    loops: list[Loop]


@contextlib.asynccontextmanager
async def _open_resources(
    settings: Settings, tracer_provider: TracerProvider | None
) -> AsyncIterator[_Opened]:
    async with contextlib.AsyncExitStack() as stack:
        # min_size=0: the gateway starts (and /ready says why it is not ready) while
        # PostgreSQL is still down; the relay and the tracker wait for it.
        pool = await stack.enter_async_context(
            open_pool(settings.database_url, min_size=0, max_size=POOL_MAX_SIZE)
        )
        redis = await stack.enter_async_context(open_redis(settings.redis_url))
        await ensure_groups(redis, GROUPS)
        broker = create_broker(settings.redis_url, tracer_provider)
        await broker.connect()
        stack.push_async_callback(broker.stop)
        storage = open_storage(settings.storage_url)
        retention_s = settings.retention_s
        relay = OutboxRelay(
            pool,
            redis,
            tracer_provider=tracer_provider,
            keep_processed_events_s=float(retention_s),
            live_ttl_s=retention_s,
            purges=[functools.partial(purge_ended_tasks, older_than_s=float(retention_s))],
        )
        tracker = Tracker(
            pool, redis, settings, on_outbox_written=relay.wake, tracer_provider=tracer_provider
        )
        reconciler = Reconciler(pool, redis, settings, on_outbox_written=relay.wake)
        scheduler = Scheduler(
            pool,
            settings.database_url,
            on_outbox_written=relay.wake,
            tracer_provider=tracer_provider,
        )
        # The gateway is a worker too (its tracker consumes downlink:events): it shows up in
        # GET /api/v1/workers with the tracker's counters.
        await stack.enter_async_context(
            worker_presence(redis, "gateway", consumer_name(), tracker.consumer.stats)
        )
        await _warn_if_database_down(pool)
        yield _Opened(
            resources.Resources(
                settings=settings,
                pool=pool,
                redis=redis,
                storage=storage,
                repository=JobRepository(pool),
                exports=ExportRepository(pool),
                relay=relay,
                broker=broker,
            ),
            loops=[
                (relay.run, relay.stop),
                (tracker.run, tracker.stop),
                (reconciler.run, reconciler.stop),
                (scheduler.run, scheduler.stop),
            ],
        )


@contextlib.asynccontextmanager
async def _running(loops: list[Loop], *, grace_s: float) -> AsyncIterator[None]:
    """Run the background loops for the duration of the block, then stop them within `grace_s`."""
    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(run(), name=getattr(run, "__qualname__", "loop")) for run, _ in loops
        ]
        try:
            yield
        finally:
            for _, stop in loops:
                stop()
            _done, late = await asyncio.wait(tasks, timeout=grace_s)
            for task in late:
                log.warning("%s did not stop within %.0fs; cancelling it", task.get_name(), grace_s)
                task.cancel()


async def _warn_if_database_down(pool: Any) -> None:
    try:
        await asyncio.wait_for(pool.fetchval("SELECT 1"), 5.0)
    except _STARTUP_OUTAGES as exc:
        log.warning("PostgreSQL unreachable at start (%s); /ready answers 503 until it is", exc)


def _telemetry_plugins(tracer_provider: TracerProvider | None) -> list[PluginProtocol]:
    try:
        from litestar.plugins.opentelemetry import (
            OpenTelemetryConfig,
            OpenTelemetryPlugin,
        )
    except ImportError:  # litestar[opentelemetry] not installed: run untraced
        return []
    config = OpenTelemetryConfig(
        tracer_provider=tracer_provider,
        # One span per request is what we read; one per ASGI message of a streamed file is noise.
        exclude_spans=["receive", "send"],
        # Litestar's default names spans by the raw path: one name per id, ungroupable.
        scope_span_details_extractor=initial_span_details,
    )
    return [OpenTelemetryPlugin(config), RouteSpanNames()]


# --- errors -> HTTP: the one mapping --------------------------------------------------------


class _BoundedRequest(Request[Any, Any, Any]):
    """A request whose JSON body nested too deep to decode is a 400, not a RecursionError."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise InvalidRequest(
                "body: JSON nested too deeply to decode"
                f" (metadata may nest at most {MAX_METADATA_DEPTH} levels)"
            ) from None


def _error_map() -> ExceptionHandlersMap:
    handlers: dict[type[Exception], Callable[[Request[Any, Any, Any], Any], Response[Any]]] = {
        GatewayError: _on_gateway_error,
        TaskTypeError: _on_task_type_error,
        ValidationException: _on_validation_error,
        HTTPException: _on_http_exception,
        Exception: _on_unexpected_error,
    }
    for error in (*DATABASE_DOWN, *_REDIS_DOWN):
        handlers[error] = _on_dependency_down
    return handlers  # type: ignore[return-value]


def _error(
    status_code: int, detail: str, *, headers: dict[str, str] | None = None, extra: Any = None
) -> Response[ErrorBody]:
    return Response(
        ErrorBody(status_code=status_code, detail=detail, extra=extra),
        status_code=status_code,
        headers=headers,
    )


def _on_gateway_error(_: Request[Any, Any, Any], exc: GatewayError) -> Response[ErrorBody]:
    return _error(exc.status_code, str(exc), headers=exc.headers or None)


def _on_task_type_error(_: Request[Any, Any, Any], exc: TaskTypeError) -> Response[ErrorBody]:
    return _error(TASK_TYPE_STATUS[type(exc)], str(exc))


def _on_validation_error(
    _: Request[Any, Any, Any], exc: ValidationException
) -> Response[ErrorBody]:
    # Litestar says "Validation failed for POST /path" and lists the fields in `extra`; the
    # detail itself should name them, since that is the line people read.
    problems = exc.extra if isinstance(exc.extra, list) else []
    named = [_name_field(problem) for problem in problems if isinstance(problem, dict)]
    detail = "; ".join(named) if named else exc.detail
    return _error(exc.status_code, detail, extra=exc.extra or None)


def _name_field(problem: dict[str, Any]) -> str:
    message = str(problem.get("message", "invalid"))
    key = str(problem.get("key") or "")
    # "data" is the whole body: our own messages (the schemas) already start with the field.
    if not key or key == "data":
        return message
    if problem.get("source") == "header":
        # Litestar names the handler's parameter (idempotency_key); clients know the header.
        key = "-".join(part.capitalize() for part in key.split("_"))
    return f"{key}: {message}"


def _on_http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    if exc.status_code >= 500:
        log.error("HTTP %d: %s", exc.status_code, exc.detail, exc_info=exc)
    return _error(exc.status_code, exc.detail, headers=exc.headers, extra=exc.extra or None)


def _on_dependency_down(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    which = "Redis" if isinstance(exc, _REDIS_DOWN) else "PostgreSQL"
    log.warning("%s %s: %s unavailable: %s", request.method, request.url.path, which, exc)
    return _error(503, f"{which} is unavailable; try again shortly", headers={"Retry-After": "5"})


def _on_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal server error")
