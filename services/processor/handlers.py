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
from shared.errors import JobCancelled
from shared.events import (
    ArtifactCreated,
    BuildComposite,
    CompositeFinished,
    FileProcessed,
    ProcessFile,
)
from shared.ids import ArtifactId, new_event_id
from shared.storage import keys
from shared.storage.staging import SourceMissing, Staging

if TYPE_CHECKING:
    from pathlib import Path

    from shared.broker import EventPublisher
    from shared.composites import CompositeKind
    from shared.events import ArtifactKind, ProcessStep
    from shared.ids import JobId

log = logging.getLogger(__name__)
tracer = trace.get_tracer("downlink.processor")

P = ParamSpec("P")
R = TypeVar("R")

PNG = "image/png"
JSON = "application/json"
# Artifact ids are derived, not drawn: a redelivered command overwrites the same objects and
# the tracker upserts the same rows, so a retry never leaves duplicates behind.
_ARTIFACT_NAMESPACE = uuid.UUID("5d9c4a51-93f1-4a4e-9d3b-5f0f1f6c2a10")


class TaskRunner(Protocol):
    """Runs a sync function in a worker process (shared.process_pool.WorkerPool)."""

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


def artifact_id(owner_id: str, kind: str) -> ArtifactId:
    """The id of the `kind` artifact of a file or composite: the same on every try."""
    return ArtifactId(str(uuid.uuid5(_ARTIFACT_NAMESPACE, f"{owner_id}/{kind}")))


def artifact_prefix(command: ProcessFile | BuildComposite) -> str:
    """Where a command's outputs live: the owner's area, beside (never inside) job folders."""
    if isinstance(command, ProcessFile):
        return keys.artifact_prefix(command.user_id, command.job_id, file_id=command.file_id)
    return keys.artifact_prefix(command.user_id, command.job_id, composite_id=command.composite_id)


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


@dataclass(frozen=True, slots=True)
class Output:
    """One file a task writes: its artifact kind, its name in the owner's area, its media type."""

    kind: ArtifactKind
    filename: str
    content_type: str


@dataclass(frozen=True, slots=True)
class StepSpec:
    """How one per-file step runs and what it leaves behind.

    Attributes:
        task: the pool function, called with the source's path, then the output's if any.
        timeout: the StepTimeouts field that bounds the task.
        filename: the output's name, `{stem}` being the source's; None when the facts are the
            whole artifact and nothing is stored.
        content_type: the artifact's media type.
    """

    task: Callable[..., dict[str, Any]]
    timeout: str
    filename: str | None
    content_type: str


STEPS: dict[ProcessStep, StepSpec] = {
    "metadata": StepSpec(tasks.extract_metadata, "metadata_s", None, JSON),
    "thumbnail": StepSpec(tasks.make_thumbnail, "thumbnail_s", "{stem}.thumbnail.png", PNG),
    "cog": StepSpec(tasks.make_cog, "cog_s", "{stem}.cog.tif", tasks.COG_CONTENT_TYPE),
}


async def _make(
    step: ProcessStep, command: ProcessFile, source: Path, workdir: Path, deps: ProcessDeps
) -> ArtifactCreated:
    """Run `step` on the source: its artifact, stored first when the step writes a file."""
    spec = STEPS[step]
    timeout_s: float = getattr(deps.timeouts, spec.timeout)
    if spec.filename is None:
        facts = await deps.runner.run(timeout_s, spec.task, str(source))
        return _artifact(command, step, facts, content_type=spec.content_type)
    output = Output(step, spec.filename.format(stem=_stem(command.filename)), spec.content_type)
    path = workdir / output.filename
    facts = await deps.runner.run(timeout_s, spec.task, str(source), str(path))
    return await _stored(command, output, path, facts, deps)


async def _stored(
    command: ProcessFile | BuildComposite,
    output: Output,
    path: Path,
    facts: dict[str, Any],
    deps: ProcessDeps,
) -> ArtifactCreated:
    """Commit the file at `path` to the command's area and describe it as an artifact."""
    new_id = artifact_id(_owner_id(command), output.kind)
    stored = await deps.staging.store(path, f"{artifact_prefix(command)}/{output.filename}", new_id)
    return _artifact(
        command,
        output.kind,
        facts,
        artifact=new_id,
        filepath=stored.key,
        size=stored.size,
        sha256=stored.sha256,
        content_type=output.content_type,
    )


def _artifact(
    command: ProcessFile | BuildComposite,
    kind: ArtifactKind,
    facts: dict[str, Any],
    *,
    artifact: ArtifactId | None = None,
    filepath: str | None = None,
    size: int = 0,
    sha256: str = "",
    content_type: str,
) -> ArtifactCreated:
    file_id = command.file_id if isinstance(command, ProcessFile) else None
    composite_id = command.composite_id if isinstance(command, BuildComposite) else None
    return ArtifactCreated(
        event_id=new_event_id(),
        job_id=command.job_id,
        at=time.time(),
        artifact_id=artifact or artifact_id(_owner_id(command), kind),
        kind=kind,
        file_id=file_id,
        composite_id=composite_id,
        filepath=filepath,
        size=size,
        sha256=sha256,
        content_type=content_type,
        metadata=facts,
    )


def _owner_id(command: ProcessFile | BuildComposite) -> str:
    """The file or composite whose artifacts a command makes."""
    return command.file_id if isinstance(command, ProcessFile) else command.composite_id


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


@dataclass(frozen=True, slots=True)
class CompositeSpec:
    """How one composite kind is built and which artifacts it yields.

    Attributes:
        task: the pool function, called with the band paths, the crop bounds, then one path
            per output in order.
        outputs: the files the task writes, announced in this order.
        facts_keys: the key of the task's facts holding an output's own facts; outputs not
            named here share the rest.
    """

    task: Callable[..., dict[str, Any]]
    outputs: tuple[Output, ...]
    facts_keys: dict[ArtifactKind, str] = field(default_factory=dict)


COMPOSITE_OUTPUTS: dict[CompositeKind, CompositeSpec] = {
    "ndvi": CompositeSpec(tasks.build_ndvi, (Output("ndvi", "ndvi.tif", tasks.COG_CONTENT_TYPE),)),
    "rgb": CompositeSpec(
        tasks.build_rgb,
        (
            Output("rgb", "rgb.tif", tasks.COG_CONTENT_TYPE),
            Output("rgb_preview", "rgb_preview.png", PNG),
        ),
        facts_keys={"rgb_preview": "preview"},
    ),
}


async def _composite(command: BuildComposite, deps: ProcessDeps) -> list[ArtifactCreated]:
    """Build the composite from its staged bands and store every output it wrote."""
    spec = COMPOSITE_OUTPUTS[command.kind]
    with deps.staging.workdir() as workdir:
        async with _sources(command.bands, deps.staging, workdir) as paths:
            files = [workdir / output.filename for output in spec.outputs]
            facts = await deps.runner.run(
                deps.timeouts.composite_s, spec.task, paths, command.bounds, *map(str, files)
            )
            split = zip(spec.outputs, files, _split_facts(facts, spec), strict=True)
            return [
                await _stored(command, output, path, output_facts, deps)
                for output, path, output_facts in split
            ]


def _split_facts(facts: dict[str, Any], spec: CompositeSpec) -> list[dict[str, Any]]:
    """Each output's facts, in output order: its own key of `facts`, or all the unclaimed rest."""
    rest = dict(facts)
    own = {kind: rest.pop(key, {}) for kind, key in spec.facts_keys.items()}
    return [own.get(output.kind, rest) for output in spec.outputs]


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
