"""Task worker wiring: a queue's lanes, `run_task` and its hooks, run by shared.runner.

`downlink worker --tasks myapp.tasks --queue NAME` imports the modules, registers their tasks
on that queue and runs them with the guarantees of the built-in services: leases, retries with
each task's own backoff, dead letters, history, priorities (lanes), graceful SIGTERM.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.tasks.definitions import DEFAULT_TIMEOUT_S
from services.tasks.handlers import failure_event, retrying_event, run_task
from services.tasks.registry import discovered_modules, load_tasks
from services.tasks.resources import TaskResources, TaskWorker
from shared.consumer import ConsumerPolicy
from shared.events import TASK_DECODER, RunTask
from shared.runner import Listener, WorkerSpec, run_worker
from shared.streams import TASKS_GROUP, task_lanes

if TYPE_CHECKING:
    from shared.consumer import Delivery
    from shared.settings import Settings

# The handler decides when a task's tries are used up (each task has its own max_tries); the
# consumer's own limit is only a backstop no task reaches.
CONSUMER_MAX_TRIES = 1_000_000


async def on_dead(c: RunTask, w: TaskWorker, delivery: Delivery, error: BaseException) -> None:
    await w.deps.publisher.publish(failure_event(c, error, delivery.attempt, w.deps.worker))


async def on_retry(
    c: RunTask, w: TaskWorker, delivery: Delivery, error: BaseException, delay_s: float
) -> None:
    await w.deps.publisher.publish(
        retrying_event(c, error, delivery.attempt, delay_s, w.deps.worker)
    )


async def handle(c: RunTask, w: TaskWorker, delivery: Delivery) -> None:
    await run_task(c, w.deps, attempt=delivery.attempt)


async def serve(
    settings: Settings,
    *,
    modules: tuple[str, ...] | list[str],
    queue: str = "default",
    max_jobs: int = 10,
    job_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Run one task worker on `queue` until SIGTERM/SIGINT, then drain within the grace.

    Without `modules`, the ones installed packages declare in the `downlink.tasks` group.
    """
    tasks = load_tasks(modules or discovered_modules(), queue=queue)
    policy = ConsumerPolicy.from_settings(settings, concurrency=max_jobs)
    await run_worker(
        settings,
        WorkerSpec(
            name="tasks",
            streams=task_lanes(queue),
            group=TASKS_GROUP,
            decoder=TASK_DECODER,
            resources=TaskResources(tasks, job_timeout_s, max_jobs),
            handler=handle,
            policy=ConsumerPolicy(
                concurrency=policy.concurrency,
                max_tries=CONSUMER_MAX_TRIES,
                retry_backoff_s=policy.retry_backoff_s,
                claim_idle_s=policy.claim_idle_s,
                lease_renew_s=policy.lease_renew_s,
                shutdown_grace_s=policy.shutdown_grace_s,
            ),
            on_dead=on_dead,
            on_retry=on_retry,
            listeners=(
                Listener("cancel watcher", lambda w: w.cancellations.listen()),
                Listener("task registration", lambda w: w.keep_registered()),
            ),
            trimmed_streams=task_lanes(queue),
            metrics_port=settings.metrics_port,
            details=lambda _w: {"queue": queue, "tasks": sorted(tasks)},
        ),
    )
