"""Process one file or build one composite: a command in, ArtifactCreated events and a final
FileProcessed or CompositeFinished out.

Plain async functions over Protocol-typed ports; no framework or Redis imports here. The CPU
work runs in the pool (tasks.py); input the steps cannot use becomes a per-step error in the
final event, while outages and timeouts propagate so the consumer retries the message.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

from opentelemetry import trace

from services.processor import tasks
from services.processor.rasters import ProcessingError
from services.processor.staging import SourceMissing, Staging
from shared.errors import JobCancelled
from shared.events import (
    ArtifactCreated,
    BuildComposite,
    CompositeFinished,
    FileProcessed,
    ProcessFile,
)
from shared.ids import new_event_id

if TYPE_CHECKING:
    from pathlib import Path

    from shared.broker import EventPublisher
    from shared.events import ArtifactKind, ProcessStep
    from shared.ids import JobId

log = logging.getLogger(__name__)
tracer = trace.get_tracer("downlink.processor")

P = ParamSpec("P")
R = TypeVar("R")

PNG = "image/png"
# Artifact ids are derived, not drawn: a redelivered command overwrites the same objects and
# the tracker upserts the same rows, so a retry never leaves duplicates behind.
_ARTIFACT_NAMESPACE = uuid.UUID("5d9c4a51-93f1-4a4e-9d3b-5f0f1f6c2a10")


class TaskRunner(Protocol):
    """Runs a sync function in a worker process (services.processor.pool.WorkerPool)."""

    async def run(
        self, timeout_s: float, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R: ...


class Cancellations(Protocol):
    """Which jobs are cancelled; their queued processing is skipped."""

    async def is_cancelled(self, job_id: JobId) -> bool: ...


@dataclass(frozen=True, slots=True)
class StepTimeouts:
    """Seconds each kind of task may run before its worker is killed and the try fails."""

    metadata_s: float = 120.0
    thumbnail_s: float = 600.0
    cog_s: float = 3600.0
    composite_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class ProcessDeps:
    """Everything the handlers need, built once per process."""

    staging: Staging
    publisher: EventPublisher
    runner: TaskRunner
    cancellations: Cancellations
    timeouts: StepTimeouts = field(default_factory=StepTimeouts)
    tracer: trace.Tracer = tracer


def artifact_id(owner_id: str, kind: str) -> str:
    """The id of the `kind` artifact of a file or composite: the same on every try."""
    return str(uuid.uuid5(_ARTIFACT_NAMESPACE, f"{owner_id}/{kind}"))


def artifact_prefix(command: ProcessFile | BuildComposite) -> str:
    """Where a command's outputs live: the owner's area, beside (never inside) job folders."""
    owner = (
        command.file_id
        if isinstance(command, ProcessFile)
        else f"composites/{command.composite_id}"
    )
    return f"{command.user_id}/artifacts/{command.job_id}/{owner}"


# --- per-file steps ---------------------------------------------------------------------------


async def process_file(command: ProcessFile, deps: ProcessDeps) -> FileProcessed:
    """Run every step asked for the file; each failing step is named in the result."""
    if await deps.cancellations.is_cancelled(command.job_id):
        raise JobCancelled(f"job {command.job_id} is cancelled")
    steps = list(dict.fromkeys(command.steps))  # each once, in the order asked
    attributes = {
        "downlink.job_id": command.job_id,
        "downlink.file_id": command.file_id,
        "downlink.steps": steps,
    }
    errors: dict[str, str] = {}
    with deps.tracer.start_as_current_span("process.file", attributes=attributes) as span:
        with deps.staging.workdir() as workdir:
            try:
                async with deps.staging.source(command.filepath, workdir) as source:
                    for step in steps:
                        error = await _run_step(step, command, source, workdir, deps)
                        if error is not None:
                            errors[step] = error
            except SourceMissing as exc:
                errors = {step: str(exc) for step in steps}
        if errors:
            span.set_attribute("downlink.failed_steps", sorted(errors))
        finished = FileProcessed(
            event_id=new_event_id(),
            job_id=command.job_id,
            at=time.time(),
            file_id=command.file_id,
            errors=errors,
        )
        await deps.publisher.publish(finished)
    log.info(
        "processed file %s",
        command.file_id,
        extra={"job_id": command.job_id, "file_id": command.file_id, "errors": errors},
    )
    return finished


async def _run_step(
    step: ProcessStep, command: ProcessFile, source: Path, workdir: Path, deps: ProcessDeps
) -> str | None:
    """Run one step and publish its artifact; the step's error message, or None."""
    attributes = {
        "downlink.job_id": command.job_id,
        "downlink.file_id": command.file_id,
        "downlink.step": step,
    }
    with deps.tracer.start_as_current_span(f"process.{step}", attributes=attributes) as span:
        started = time.monotonic()
        try:
            artifact = await _make(step, command, source, workdir, deps)
        except ProcessingError as exc:
            span.set_status(trace.StatusCode.ERROR, str(exc))
            log.warning(
                "step %s of file %s failed: %s",
                step,
                command.file_id,
                exc,
                extra={"job_id": command.job_id, "file_id": command.file_id, "step": step},
            )
            return str(exc)
        await deps.publisher.publish(artifact)
        log.info(
            "step %s of file %s done",
            step,
            command.file_id,
            extra={
                "job_id": command.job_id,
                "file_id": command.file_id,
                "step": step,
                "duration_s": round(time.monotonic() - started, 3),
                "artifact_id": artifact.artifact_id,
            },
        )
        return None


async def _make(
    step: ProcessStep, command: ProcessFile, source: Path, workdir: Path, deps: ProcessDeps
) -> ArtifactCreated:
    timeouts = deps.timeouts
    if step == "metadata":
        facts = await deps.runner.run(timeouts.metadata_s, tasks.extract_metadata, str(source))
        return _artifact(command, "metadata", facts)
    stem = _stem(command.filename)
    if step == "thumbnail":
        name, content_type = f"{stem}.thumbnail.png", PNG
        output = workdir / name
        facts = await deps.runner.run(
            timeouts.thumbnail_s,
            tasks.make_thumbnail,
            str(source),
            str(output),
            tasks.THUMBNAIL_MAX_PX,
        )
    else:
        name, content_type = f"{stem}.cog.tif", tasks.COG_CONTENT_TYPE
        output = workdir / name
        facts = await deps.runner.run(timeouts.cog_s, tasks.make_cog, str(source), str(output))
    new_id = artifact_id(command.file_id, step)
    stored = await deps.staging.store(output, f"{artifact_prefix(command)}/{name}", new_id)
    return _artifact(
        command,
        step,
        facts,
        artifact=new_id,
        filepath=stored.key,
        size=stored.size,
        sha256=stored.sha256,
        content_type=content_type,
    )


def _artifact(
    command: ProcessFile | BuildComposite,
    kind: ArtifactKind,
    facts: dict[str, Any],
    *,
    artifact: str | None = None,
    filepath: str | None = None,
    size: int = 0,
    sha256: str = "",
    content_type: str | None = None,
) -> ArtifactCreated:
    is_file = isinstance(command, ProcessFile)
    owner = command.file_id if isinstance(command, ProcessFile) else command.composite_id
    return ArtifactCreated(
        event_id=new_event_id(),
        job_id=command.job_id,
        at=time.time(),
        artifact_id=artifact or artifact_id(owner, kind),
        kind=kind,
        file_id=command.file_id if isinstance(command, ProcessFile) else None,
        composite_id=None if is_file else owner,
        filepath=filepath,
        size=size,
        sha256=sha256,
        content_type=content_type or ("application/json" if filepath is None else None),
        metadata=facts,
    )


def _stem(filename: str) -> str:
    name = PurePosixPath(filename).name
    stem = PurePosixPath(name).stem
    return stem or name or "file"


# --- job-level composites ---------------------------------------------------------------------


async def build_composite(command: BuildComposite, deps: ProcessDeps) -> CompositeFinished:
    """Build an NDVI or RGB composite from the job's bands; its error, if any, in the result."""
    if await deps.cancellations.is_cancelled(command.job_id):
        raise JobCancelled(f"job {command.job_id} is cancelled")
    attributes = {
        "downlink.job_id": command.job_id,
        "downlink.composite_id": command.composite_id,
        "downlink.kind": command.kind,
    }
    error: str | None = None
    with deps.tracer.start_as_current_span(
        f"process.{command.kind}", attributes=attributes
    ) as span:
        started = time.monotonic()
        try:
            artifacts = await _composite(command, deps)
        except (ProcessingError, SourceMissing) as exc:
            error = str(exc)
            span.set_status(trace.StatusCode.ERROR, error)
            log.warning(
                "composite %s failed: %s",
                command.composite_id,
                error,
                extra={"job_id": command.job_id, "composite_id": command.composite_id},
            )
        else:
            for artifact in artifacts:
                await deps.publisher.publish(artifact)
            log.info(
                "composite %s done",
                command.composite_id,
                extra={
                    "job_id": command.job_id,
                    "composite_id": command.composite_id,
                    "kind": command.kind,
                    "duration_s": round(time.monotonic() - started, 3),
                },
            )
        finished = CompositeFinished(
            event_id=new_event_id(),
            job_id=command.job_id,
            at=time.time(),
            composite_id=command.composite_id,
            error=error,
        )
        await deps.publisher.publish(finished)
    return finished


async def _composite(command: BuildComposite, deps: ProcessDeps) -> list[ArtifactCreated]:
    prefix = artifact_prefix(command)
    with deps.staging.workdir() as workdir:
        async with _sources(command.bands, deps.staging, workdir) as paths:
            if command.kind == "ndvi":
                output = workdir / "ndvi.tif"
                facts = await deps.runner.run(
                    deps.timeouts.composite_s, tasks.build_ndvi, paths, command.bounds, str(output)
                )
                return [
                    await _stored(
                        command,
                        "ndvi",
                        output,
                        prefix=prefix,
                        facts=facts,
                        content_type=tasks.COG_CONTENT_TYPE,
                        deps=deps,
                    )
                ]
            output, preview = workdir / "rgb.tif", workdir / "rgb_preview.png"
            facts = await deps.runner.run(
                deps.timeouts.composite_s,
                tasks.build_rgb,
                paths,
                command.bounds,
                str(output),
                str(preview),
            )
            preview_facts = facts.pop("preview", {})
            return [
                await _stored(
                    command,
                    "rgb",
                    output,
                    prefix=prefix,
                    facts=facts,
                    content_type=tasks.COG_CONTENT_TYPE,
                    deps=deps,
                ),
                await _stored(
                    command,
                    "rgb_preview",
                    preview,
                    prefix=prefix,
                    facts=preview_facts,
                    content_type=PNG,
                    deps=deps,
                ),
            ]


async def _stored(
    command: BuildComposite,
    kind: ArtifactKind,
    output: Path,
    *,
    prefix: str,
    facts: dict[str, Any],
    content_type: str,
    deps: ProcessDeps,
) -> ArtifactCreated:
    new_id = artifact_id(command.composite_id, kind)
    stored = await deps.staging.store(output, f"{prefix}/{output.name}", new_id)
    return _artifact(
        command,
        kind,
        facts,
        artifact=new_id,
        filepath=stored.key,
        size=stored.size,
        sha256=stored.sha256,
        content_type=content_type,
    )


@contextlib.asynccontextmanager
async def _sources(
    bands: dict[str, str], staging: Staging, workdir: Path
) -> AsyncIterator[dict[str, str]]:
    """Local paths of every band of a composite, staged together and released together."""
    async with contextlib.AsyncExitStack() as stack:
        paths: dict[str, str] = {}
        for role, key in bands.items():
            paths[role] = str(await stack.enter_async_context(staging.source(key, workdir)))
        yield paths


# --- when the consumer gives up ---------------------------------------------------------------


def failure_event(
    command: ProcessFile | BuildComposite, error: BaseException, attempts: int
) -> FileProcessed | CompositeFinished:
    """The final event of work that ran out of tries, so the job is not left waiting for it."""
    message = f"gave up after {attempts} tries: {error}"
    if isinstance(command, ProcessFile):
        return FileProcessed(
            event_id=new_event_id(),
            job_id=command.job_id,
            at=time.time(),
            file_id=command.file_id,
            errors={step: message for step in dict.fromkeys(command.steps)},
        )
    return CompositeFinished(
        event_id=new_event_id(),
        job_id=command.job_id,
        at=time.time(),
        composite_id=command.composite_id,
        error=message,
    )
