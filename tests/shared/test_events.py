"""The wire contract of commands and events: round-trips, stable tags, old payloads still decode."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from shared.events import (
    DOWNLOAD_DECODER,
    ENCODER,
    EVENT_DECODER,
    WORK_COMMAND_DECODER,
    ArtifactCreated,
    BuildComposite,
    BuildExport,
    CompositeFinished,
    DownloadFile,
    Event,
    ExportEvent,
    ExportFailed,
    ExportItem,
    ExportProgress,
    ExportReady,
    FileDownloaded,
    FileFailed,
    FileProcessed,
    FileProgress,
    FileRetrying,
    FileStarted,
    JobFinished,
    PipelineEvent,
    ProcessFile,
    RunTask,
    TaskCheckpointed,
    TaskEnqueued,
    TaskFailed,
    TaskProgress,
    TaskRetrying,
    TaskStarted,
    TaskSucceeded,
    WorkCommand,
)
from shared.ids import EventId, FileId, JobId, TaskId, UserId

SHA = hashlib.sha256(b"scene").hexdigest()
JOB = JobId("0b7c3d2e-0000-4000-8000-000000000001")
FILE = FileId("0b7c3d2e-0000-4000-8000-000000000002")
EVENT = EventId("0b7c3d2e-0000-4000-8000-000000000003")

EVENTS: list[Event | ExportEvent] = [
    FileStarted(event_id=EVENT, job_id=JOB, at=1.5, file_id=FILE, attempt=2, worker="h-1"),
    FileProgress(
        event_id=EVENT,
        job_id=JOB,
        at=2.0,
        file_id=FILE,
        bytes_downloaded=10,
        total_bytes=20,
        rate_bps=5.5,
    ),
    FileDownloaded(
        event_id=EVENT,
        job_id=JOB,
        at=3.0,
        file_id=FILE,
        filename="B04.tif",
        filepath="u/j/B04.tif",
        size=5,
        sha256=SHA,
        content_type="image/tiff",
    ),
    FileFailed(
        event_id=EVENT,
        job_id=JOB,
        at=4.0,
        file_id=FILE,
        error="HTTP 404",
        permanent=False,
        attempts=3,
    ),
    JobFinished(event_id=EVENT, job_id=JOB, at=5.0, status="partial", successful=1, failed=1),
    FileRetrying(
        event_id=EVENT, job_id=JOB, at=5.5, file_id=FILE, attempt=1, error="HTTP 503", retry_in_s=5
    ),
    ArtifactCreated(
        event_id=EVENT,
        job_id=JOB,
        at=6.0,
        artifact_id="a-1",
        kind="thumbnail",
        file_id=FILE,
        filepath="u/j/B04.thumb.png",
        size=100,
        sha256=SHA,
        content_type="image/png",
        metadata={"width": 256},
    ),
    FileProcessed(event_id=EVENT, job_id=JOB, at=7.0, file_id=FILE, errors={"cog": "corrupt"}),
    CompositeFinished(event_id=EVENT, job_id=JOB, at=8.0, composite_id="c-1", error=None),
    ExportProgress(event_id=EVENT, export_id="x-1", at=9.0, files_done=3, bytes_done=300),
    ExportReady(
        event_id=EVENT,
        export_id="x-1",
        at=10.0,
        filepath="u/exports/x-1.zip",
        size=400,
        sha256=SHA,
        file_count=3,
    ),
    ExportFailed(event_id=EVENT, export_id="x-1", at=11.0, error="too large"),
    TaskStarted(event_id=EVENT, task_id=TaskId("t-1"), at=12.0, attempt=2, worker="h-1"),
    TaskProgress(event_id=EVENT, task_id=TaskId("t-1"), at=13.0, done=3, total=9, message="g3"),
    TaskSucceeded(event_id=EVENT, task_id=TaskId("t-1"), at=14.0, result={"ok": [1, 2]}),
    TaskRetrying(event_id=EVENT, task_id=TaskId("t-1"), at=15.0, attempt=1, error="E: x"),
    TaskFailed(event_id=EVENT, task_id=TaskId("t-1"), at=16.0, error="Permanent: y", attempts=3),
    TaskEnqueued(
        event_id=EVENT,
        task_id=TaskId("t-2"),
        at=17.0,
        parent_id=TaskId("t-1"),
        user_id=UserId("u-1"),
        task="create_thumbnail",
        args={"image_id": 7},
        queue="cpu",
        priority=8,
        run_at=18.0,
        trace_headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
    ),
    TaskCheckpointed(event_id=EVENT, task_id=TaskId("t-1"), at=19.0, state={"next": 3}, attempt=2),
]

COMMANDS = [
    DownloadFile(
        job_id=JOB,
        file_id=FILE,
        user_id=UserId("u-1"),
        url="https://example.invalid/B04.tif",
        filename="B04.tif",
        sha256=SHA,
        priority=9,
    ),
    ProcessFile(
        job_id=JOB,
        file_id=FILE,
        user_id=UserId("u-1"),
        filepath="u/j/B04.tif",
        filename="B04.tif",
        steps=("metadata", "thumbnail"),
        priority=5,
    ),
    BuildComposite(
        job_id=JOB,
        composite_id="c-1",
        user_id=UserId("u-1"),
        kind="ndvi",
        bands={"red": "u/j/B04.tif", "nir": "u/j/B08.tif"},
        bounds=(11.0, 46.0, 11.5, 46.5),
    ),
    BuildExport(
        export_id="x-1",
        user_id=UserId("u-1"),
        format="zip",
        items=(
            ExportItem(
                file_id=FILE,
                job_id=JOB,
                filepath="u/j/B04.tif",
                arcname="j/B04.tif",
                size=5,
                sha256=SHA,
                url="https://example.invalid/B04.tif",
            ),
        ),
        jobs=({"job_id": JOB, "status": "completed"},),
    ),
    RunTask(
        task_id=TaskId("t-1"),
        user_id=UserId("u-1"),
        task="create_thumbnail",
        args={"image_id": 7},
        queue="cpu",
        priority=8,
    ),
]

# Renaming a class must never change these: they are what stored messages carry.
TAGS = {
    FileStarted: "file.started",
    FileProgress: "file.progress",
    FileDownloaded: "file.downloaded",
    FileFailed: "file.failed",
    JobFinished: "job.finished",
    FileRetrying: "file.retrying",
    ArtifactCreated: "artifact.created",
    FileProcessed: "file.processed",
    CompositeFinished: "composite.finished",
    ExportProgress: "export.progress",
    ExportReady: "export.ready",
    ExportFailed: "export.failed",
    DownloadFile: "download.file",
    ProcessFile: "process.file",
    BuildComposite: "process.composite",
    BuildExport: "export.build",
    TaskStarted: "task.started",
    TaskProgress: "task.progress",
    TaskSucceeded: "task.succeeded",
    TaskRetrying: "task.retrying",
    TaskFailed: "task.failed",
    TaskEnqueued: "task.enqueued",
    TaskCheckpointed: "task.checkpointed",
    RunTask: "task.run",
}


def test_every_union_member_has_a_sample() -> None:
    members = {*PipelineEvent.__args__, *WorkCommand.__args__}  # type: ignore[attr-defined]
    assert {type(e) for e in EVENTS} | {type(c) for c in COMMANDS} == members
    assert set(TAGS) == members


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_events_round_trip(event: Event | ExportEvent) -> None:
    assert EVENT_DECODER.decode(ENCODER.encode(event)) == event


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: type(c).__name__)
def test_commands_round_trip(command: WorkCommand) -> None:
    assert WORK_COMMAND_DECODER.decode(ENCODER.encode(command)) == command


@pytest.mark.parametrize(("cls", "tag"), TAGS.items(), ids=lambda v: getattr(v, "__name__", v))
def test_tags_are_stable(cls: type[msgspec.Struct], tag: str) -> None:
    sample = next(m for m in [*EVENTS, *COMMANDS] if type(m) is cls)
    assert msgspec.json.decode(ENCODER.encode(sample))["type"] == tag


def test_an_event_is_not_a_command() -> None:
    with pytest.raises(msgspec.ValidationError):
        DOWNLOAD_DECODER.decode(ENCODER.encode(EVENTS[0]))
    with pytest.raises(msgspec.ValidationError):
        EVENT_DECODER.decode(ENCODER.encode(COMMANDS[0]))


def test_an_unknown_tag_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        EVENT_DECODER.decode(b'{"type":"file.exploded","event_id":"e","job_id":"j","at":1}')


# Payloads as an older producer wrote them: no optional fields, and one field nobody knows.
OLD_FILE_DOWNLOADED = (
    b'{"type":"file.downloaded","event_id":"e-1","job_id":"j-1","at":1700000000.25,'
    b'"file_id":"f-1","filename":"B04.tif","filepath":"u/j-1/B04.tif","size":5,'
    b'"sha256":"' + SHA.encode() + b'"}'
)
OLD_FILE_STARTED = (
    b'{"type":"file.started","event_id":"e-2","job_id":"j-1","at":1.0,"file_id":"f-1"}'
)
OLD_FILE_FAILED = (
    b'{"type":"file.failed","event_id":"e-3","job_id":"j-1","at":2.0,"file_id":"f-1",'
    b'"error":"HTTP 404","legacy_code":17}'
)
OLD_DOWNLOAD_FILE = (
    b'{"type":"download.file","job_id":"j-1","file_id":"f-1","user_id":"u-1",'
    b'"url":"http://example.invalid/B04.tif"}'
)


def test_an_old_file_downloaded_payload_decodes_with_defaults() -> None:
    event = EVENT_DECODER.decode(OLD_FILE_DOWNLOADED)
    assert event == FileDownloaded(
        event_id=EventId("e-1"),
        job_id=JobId("j-1"),
        at=1700000000.25,
        file_id=FileId("f-1"),
        filename="B04.tif",
        filepath="u/j-1/B04.tif",
        size=5,
        sha256=SHA,
        content_type=None,
    )


def test_an_old_file_started_payload_decodes_with_defaults() -> None:
    event = EVENT_DECODER.decode(OLD_FILE_STARTED)
    assert isinstance(event, FileStarted)
    assert (event.attempt, event.worker) == (1, "")


def test_an_old_task_failure_is_a_dead_letter_and_an_old_run_has_no_checkpoint() -> None:
    failed = EVENT_DECODER.decode(
        b'{"type":"task.failed","event_id":"e-3","task_id":"t-1","at":1.0,"error":"E: x"}'
    )
    assert isinstance(failed, TaskFailed)
    assert failed.dead_lettered
    run = WORK_COMMAND_DECODER.decode(
        b'{"type":"task.run","task_id":"t-1","user_id":"u-1","task":"add","args":{"a":1}}'
    )
    assert isinstance(run, RunTask)
    assert run.checkpoint is None


def test_unknown_fields_are_tolerated() -> None:
    event = EVENT_DECODER.decode(OLD_FILE_FAILED)
    assert isinstance(event, FileFailed)
    assert (event.error, event.permanent, event.attempts) == ("HTTP 404", True, 1)
    newer = OLD_DOWNLOAD_FILE[:-1] + b',"mirror_urls":["http://example.invalid/b"]}'
    assert DOWNLOAD_DECODER.decode(newer) == DOWNLOAD_DECODER.decode(OLD_DOWNLOAD_FILE)


def test_an_old_download_command_decodes_with_defaults() -> None:
    command = DOWNLOAD_DECODER.decode(OLD_DOWNLOAD_FILE)
    assert command == DownloadFile(
        job_id=JobId("j-1"),
        file_id=FileId("f-1"),
        user_id=UserId("u-1"),
        url="http://example.invalid/B04.tif",
    )
    assert (command.filename, command.sha256, command.priority) == (None, None, 5)


@pytest.mark.parametrize("bad", ["ABC", SHA.upper(), SHA[:-1], SHA + "0"])
def test_a_malformed_sha256_is_refused(bad: str) -> None:
    payload = OLD_DOWNLOAD_FILE[:-1] + f',"sha256":"{bad}"}}'.encode()
    with pytest.raises(msgspec.ValidationError, match="sha256"):
        DOWNLOAD_DECODER.decode(payload)


def test_events_are_immutable() -> None:
    with pytest.raises(AttributeError):
        EVENTS[0].job_id = JobId("other")  # type: ignore[misc]
