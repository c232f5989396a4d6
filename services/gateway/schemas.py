"""HTTP request and response bodies of the gateway (msgspec Structs, apart from the events).

Inputs forbid unknown fields, so a typo in a field name is an error, not a silent default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit
from uuid import UUID

import msgspec

from services.gateway.statuses import FileStatus, JobStatus

MAX_FILES_PER_JOB = 10_000
ALLOWED_SCHEMES = frozenset({"http", "https"})
# `metadata` is stored as jsonb and served back in every status and listing: bounded so that
# whatever is accepted can always be encoded again (deep nesting exhausts the stack).
MAX_METADATA_DEPTH = 32
MAX_METADATA_BYTES = 64 * 1024
# Listing offsets are PostgreSQL bigints and Redis counts; no one pages this far.
MAX_PAGE = 1_000_000

Url = Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]
Filename = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
Sha256Hex = Annotated[
    str,
    msgspec.Meta(pattern="^[0-9a-fA-F]{64}$", description="hex SHA-256 the bytes must hash to"),
]
Priority = Annotated[int, msgspec.Meta(ge=1, le=10, description="1 (lowest) to 10 (highest)")]
ProcessStep = Literal["metadata", "thumbnail", "cog"]
JobTimeout = Annotated[
    int,
    msgspec.Meta(
        ge=1,
        le=30 * 86_400,
        description=(
            "seconds (1 s to 30 days) after which the job's unfinished files fail and the job "
            "ends; overrides DOWNLINK_JOB_TIMEOUT"
        ),
    ),
]


# --- submit ---------------------------------------------------------------------------------


class FileRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One file to fetch, with an optional name and expected digest."""

    url: Url
    filename: Filename | None = None
    sha256: Sha256Hex | None = None


class CompositeRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A band composite built once every named file is downloaded (the tracker decides).

    `bands` maps each role of the kind (ndvi: red, nir; rgb: red, green, blue) to a file of the
    job, named by its `filename` in `files` or the last segment of its URL.
    """

    kind: Literal["ndvi", "rgb"]
    bands: dict[str, Filename]
    bounds: Annotated[
        tuple[float, float, float, float] | None,
        msgspec.Meta(description="WGS84 (west, south, east, north) to crop to"),
    ] = None


class ExportRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """An archive to build when the job ends (stored, not acted on yet)."""

    format: Literal["zip", "tar.gz"]
    include_metadata: bool = True


class SubmitRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """POST /api/v1/downloads/download: `urls`, `files` or both, 1-10000 in total."""

    urls: Annotated[list[Url], msgspec.Meta(max_length=MAX_FILES_PER_JOB)] = []
    files: Annotated[list[FileRequest], msgspec.Meta(max_length=MAX_FILES_PER_JOB)] = []
    priority: Priority = 5
    metadata: Annotated[
        dict[str, Any],
        msgspec.Meta(
            description=(
                f"free-form JSON kept with the job: at most {MAX_METADATA_DEPTH} levels deep and "
                f"{MAX_METADATA_BYTES} bytes encoded, no NUL characters"
            )
        ),
    ] = {}
    process: list[ProcessStep] | None = None
    composites: list[CompositeRequest] | None = None
    export: ExportRequest | None = None
    timeout_s: JobTimeout | None = None

    def __post_init__(self) -> None:
        # msgspec reports a ValueError raised here as a validation error of the body, so the
        # message itself must name the field.
        total = len(self.urls) + len(self.files)
        if total == 0:
            raise ValueError("urls: at least one URL is required (in `urls` or `files`)")
        if total > MAX_FILES_PER_JOB:
            raise ValueError(
                f"urls, files: at most {MAX_FILES_PER_JOB} URLs per job in total, got {total}"
            )
        if problem := self._files_problem() or metadata_problem(self.metadata):
            raise ValueError(problem)
        if self.composites:
            requested = self.requested_files()
            for index, composite in enumerate(self.composites):
                if problem := composite_problem(composite, requested):
                    raise ValueError(f"composites[{index}].{problem}")

    def _files_problem(self) -> str | None:
        for index, url in enumerate(self.urls):
            if problem := url_problem(url):
                return f"urls[{index}]: {problem}"
        for index, file in enumerate(self.files):
            if problem := url_problem(file.url):
                return f"files[{index}].url: {problem}"
            if file.filename is not None and _NUL in file.filename:
                return f"files[{index}].filename: {NUL_PROBLEM}"
        return None

    def requested_files(self) -> list[FileRequest]:
        """Every file of the job in submission order: `urls` first, then `files`."""
        return [FileRequest(url=url) for url in self.urls] + list(self.files)

    def options(self) -> dict[str, Any]:
        """The follow-up work the job asked for, as stored in jobs.options."""
        return {
            name: msgspec.to_builtins(value)
            for name in ("process", "composites", "export")
            if (value := getattr(self, name)) is not None
        }


_NUL = "\x00"
NUL_PROBLEM = "must not contain NUL (\\u0000) characters"


def metadata_problem(metadata: dict[str, Any]) -> str | None:
    """Why `metadata` cannot be stored and served back (field path first), or None."""
    # Walked with a stack, not recursion: the point is to refuse what is too deep to recurse.
    # Every value and every character takes at least a byte of JSON, so the budget stops the
    # walk of a huge value long before it is encoded.
    budget = MAX_METADATA_BYTES
    pending: list[tuple[Any, tuple[str | int, ...]]] = [(metadata, ())]
    while pending and budget >= 0:
        value, keys = pending.pop()
        budget -= 1
        if isinstance(value, str):
            budget -= len(value)
            if _NUL in value:
                return f"{_json_path('metadata', keys)}: {NUL_PROBLEM}"
        elif isinstance(value, dict | list):
            if len(keys) >= MAX_METADATA_DEPTH:
                where = _json_path("metadata", keys)
                return f"metadata: nested deeper than {MAX_METADATA_DEPTH} levels (at {where})"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    budget -= len(key)
                    if _NUL in key:
                        return f"{_json_path('metadata', keys)}: key {key!r} {NUL_PROBLEM}"
                pending.append((item, (*keys, key)))
    size = len(msgspec.json.encode(metadata)) if budget >= 0 else None
    if size is None or size > MAX_METADATA_BYTES:
        measured = f"{size} bytes" if size is not None else "larger"
        return f"metadata: {measured} as JSON; at most {MAX_METADATA_BYTES} bytes"
    return None


def _json_path(field: str, keys: Sequence[str | int]) -> str:
    return field + "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in keys)


def url_problem(url: str) -> str | None:
    """Why `url` cannot be downloaded, or None when it is an http(s) URL with a host."""
    if any(char.isspace() or ord(char) < 32 for char in url):
        return "URL contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port raises on a malformed one
    except ValueError as exc:
        return f"malformed URL: {exc}"
    scheme = parts.scheme.lower()
    if not scheme:
        return "missing scheme (http or https)"
    if scheme not in ALLOWED_SCHEMES:
        return f"unsupported scheme {scheme!r}"
    if not parts.hostname:
        return "missing host"
    return None


class SubmitResponse(msgspec.Struct, frozen=True, kw_only=True):
    """202 answer to a submission (also to a repeated one with the same Idempotency-Key)."""

    job_id: str
    status: JobStatus
    created_at: datetime
    queue_position: Annotated[
        int,
        msgspec.Meta(
            description="1 + the files of older jobs still waiting in this job's lane",
        ),
    ]
    estimated_time: Annotated[
        float | None,
        msgspec.Meta(
            description=(
                "seconds until this job's files are done at the throughput of the last 5 "
                "minutes (files ahead in the lane plus this job's); null when no file "
                "finished in that window, since there is nothing to estimate from"
            ),
        ),
    ]
    message: str


# --- status, results, listing ---------------------------------------------------------------


class Progress(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """File counts of one job; `percentage` counts every file in a final state, and each file's
    processing and each composite when the job asked for them (`processing`, else omitted)."""

    total: int
    completed: int
    failed: int
    percentage: float
    current_file: str | None
    bytes_downloaded: int
    processing: ProcessingProgress | None = None


class JobStatusResponse(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    status: JobStatus
    priority: int
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    progress: Progress
    error: str | None = None


class FileResult(msgspec.Struct, frozen=True, kw_only=True):
    """One file of a job; `hash` is the hex SHA-256 of the stored bytes."""

    file_id: str
    url: str
    status: FileStatus
    filepath: str | None
    filename: str | None
    size: int | None
    hash: str | None
    downloaded_at: datetime | None
    error: str | None = None
    artifacts: FileArtifacts | None = None


class ResultSummary(msgspec.Struct, frozen=True, kw_only=True):
    total_requested: int
    successful: int
    failed: int
    total_size: int


class JobResultResponse(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    status: JobStatus
    results: list[FileResult]
    summary: ResultSummary
    export: JobExportRef | None = None
    composites: list[CompositeResult] = []


class JobListResponse(msgspec.Struct, frozen=True, kw_only=True):
    """One page of the caller's jobs, newest first."""

    jobs: list[JobStatusResponse]
    page: int
    per_page: int
    total: int


# --- cancel ---------------------------------------------------------------------------------


class CancelRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    reason: Annotated[str, msgspec.Meta(max_length=1000)] | None = None

    def __post_init__(self) -> None:
        if self.reason is not None and _NUL in self.reason:
            raise ValueError(f"reason: {NUL_PROBLEM}")


class CancelResponse(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    status: JobStatus


# --- admin: dead letters --------------------------------------------------------------------


class DeadLetterView(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of `downlink:dead`.

    `body` is the decoded DownloadFile where the letter carries one, else the raw body (a
    poison message); `job_id`, `file_id` and `url` are filled in where the body names them.
    """

    id: Annotated[str, msgspec.Meta(description="the entry id on the dead-letter stream")]
    stream: str
    group: str
    entry_id: Annotated[str, msgspec.Meta(description="the entry id on its original stream")]
    error: str
    attempts: int
    consumer: str
    failed_at: datetime
    body: dict[str, Any] | str
    job_id: str | None = None
    file_id: str | None = None
    url: str | None = None


class DeadLetterListResponse(msgspec.Struct, frozen=True, kw_only=True):
    """One page of dead letters, newest first."""

    dead_letters: list[DeadLetterView]
    page: int
    per_page: int
    total: int


class RetryResponse(msgspec.Struct, frozen=True, kw_only=True):
    """202 answer to a re-drive: the letter left the dead-letter stream, its work is queued."""

    id: str
    status: Literal["requeued"]
    job_id: str | None = None
    file_id: str | None = None


# --- system ---------------------------------------------------------------------------------


class Health(msgspec.Struct, frozen=True, kw_only=True):
    status: str


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    """`checks` maps each dependency to "ok" or what went wrong."""

    status: Literal["ready", "unavailable"]
    checks: dict[str, str]


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Every error answer: the status again and a message that names the offending field."""

    status_code: int
    detail: str
    extra: list[dict[str, Any]] | dict[str, Any] | None = None


# --- exports --------------------------------------------------------------------------------

MAX_EXPORT_SELECTION = 100_000


class ExportStatus(StrEnum):
    """Where an export stands; the last three are final."""

    PENDING = "pending"  # its BuildExport command is queued
    BUILDING = "building"  # an exporter is writing the archive
    READY = "ready"  # the archive is in storage and can be downloaded (final)
    FAILED = "failed"  # the archive could not be built; `error` says why (final)
    CANCELLED = "cancelled"  # stopped by its owner; stays so whatever arrives later (final)


FilePath = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class ExportCreateRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """POST /api/v1/downloads/export: any mix of jobs, file ids and file paths of the caller."""

    job_ids: Annotated[list[UUID], msgspec.Meta(max_length=MAX_FILES_PER_JOB)] = []
    file_ids: Annotated[list[UUID], msgspec.Meta(max_length=MAX_EXPORT_SELECTION)] = []
    file_paths: Annotated[
        list[FilePath],
        msgspec.Meta(
            max_length=MAX_EXPORT_SELECTION,
            description="`filepath`s as the API returned them (relative to your storage area)",
        ),
    ] = []
    export_format: Literal["zip", "tar.gz"] = "zip"
    include_metadata: Annotated[
        bool,
        msgspec.Meta(description="add manifest.json, SHA256SUMS and a STAC ItemCollection"),
    ] = True

    def __post_init__(self) -> None:
        if not (self.job_ids or self.file_ids or self.file_paths):
            raise ValueError("job_ids, file_ids, file_paths: name at least one thing to export")


class ExportCreateResponse(msgspec.Struct, frozen=True, kw_only=True):
    """202 answer to an export request."""

    export_id: str
    status: ExportStatus
    file_count: int
    total_bytes: int


class ExportProgressView(msgspec.Struct, frozen=True, kw_only=True):
    """How far the archive is: items written and their source bytes."""

    files_done: int
    bytes_done: int
    percentage: float


class ExportStatusResponse(msgspec.Struct, frozen=True, kw_only=True):
    """One export; `size` and `hash` (hex SHA-256) are the archive's once it is ready."""

    export_id: str
    status: ExportStatus
    format: Literal["zip", "tar.gz"]
    include_metadata: bool
    file_count: int
    total_bytes: Annotated[int, msgspec.Meta(description="the items' bytes before compression")]
    progress: ExportProgressView
    size: int | None = None
    hash: str | None = None
    download_url: str | None = None
    error: str | None = None
    job_id: Annotated[
        str | None, msgspec.Meta(description="the job whose automatic export this is")
    ] = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None


class ExportCancelResponse(msgspec.Struct, frozen=True, kw_only=True):
    export_id: str
    status: ExportStatus


class JobExportRef(msgspec.Struct, frozen=True, kw_only=True):
    """The automatic export of a job (submit's `export` option)."""

    export_id: str
    status: ExportStatus
    download_url: str | None = None


# --- processing -----------------------------------------------------------------------------

COMPOSITE_ROLES: dict[str, tuple[str, ...]] = {
    "ndvi": ("red", "nir"),
    "rgb": ("red", "green", "blue"),
}


def url_filename(url: str) -> str:
    """The last path segment of `url`, percent-decoded ("" when the path has none)."""
    path = urlsplit(url).path.rstrip("/")
    return unquote(path.rsplit("/", 1)[-1]) if path else ""


def match_band(name: str, files: Sequence[tuple[str, str | None]]) -> int | None:
    """The index of the (url, filename) file a composite band `name` means, or None.

    A `filename` given in the request wins over a URL's last segment; the first file wins.
    """
    for index, (_url, filename) in enumerate(files):
        if filename == name:
            return index
    for index, (url, filename) in enumerate(files):
        if filename is None and url_filename(url) == name:
            return index
    return None


def composite_problem(composite: CompositeRequest, files: Sequence[FileRequest]) -> str | None:
    """What is wrong with `composite` (field name first), or None."""
    roles = COMPOSITE_ROLES[composite.kind]
    missing = [role for role in roles if role not in composite.bands]
    if missing:
        return f"bands: {composite.kind} needs {', '.join(roles)}; missing {', '.join(missing)}"
    unknown = sorted(set(composite.bands) - set(roles))
    if unknown:
        return f"bands: {', '.join(unknown)} is not a band of {composite.kind} ({', '.join(roles)})"
    named = [(file.url, file.filename) for file in files]
    for role in roles:
        # A URL's last segment is percent-decoded, so `%00` there could match a NUL name.
        if _NUL in composite.bands[role]:
            return f"bands.{role}: {NUL_PROBLEM}"
        if match_band(composite.bands[role], named) is None:
            return (
                f"bands.{role}: {composite.bands[role]!r} is no file of the job (name it by its"
                " `filename` in `files` or by the last segment of its URL)"
            )
    if composite.bounds is not None:
        west, south, east, north = composite.bounds
        if not all(math.isfinite(value) for value in composite.bounds):
            return "bounds: every value must be a finite number"
        if not (-180 <= west < east <= 180):
            return "bounds: needs -180 <= west < east <= 180 (WGS84 longitude)"
        if not (-90 <= south < north <= 90):
            return "bounds: needs -90 <= south < north <= 90 (WGS84 latitude)"
    return None


class ProcessingProgress(msgspec.Struct, frozen=True, kw_only=True):
    """Processing of a job that asked for it: per-file steps and job-level composites.

    `files_total` counts the files whose processing was queued (once their download ended).
    """

    files_total: int
    files_completed: int
    files_failed: int
    composites_total: int
    composites_completed: int
    composites_failed: int


class ArtifactFile(msgspec.Struct, frozen=True, kw_only=True):
    """An output stored by the processor; its bytes download at `download_url`."""

    file_id: Annotated[str, msgspec.Meta(description="the artifact's id, for /files/{file_id}")]
    kind: str
    filepath: str
    size: int
    hash: str | None
    content_type: str | None
    download_url: str
    metadata: dict[str, Any] | None = None


class FileArtifacts(msgspec.Struct, frozen=True, kw_only=True):
    """What processing made of one file; `errors` names each failed step."""

    status: Literal["pending", "completed", "failed"]
    error: str | None = None
    errors: dict[str, str] = {}
    metadata: dict[str, Any] | None = None
    thumbnail: ArtifactFile | None = None
    cog: ArtifactFile | None = None


class CompositeResult(msgspec.Struct, frozen=True, kw_only=True):
    """One job-level composite and, once completed, its files."""

    composite_id: str
    kind: str
    bands: dict[str, str]
    bounds: list[float] | None = None
    status: Literal["pending", "running", "completed", "failed"]
    error: str | None = None
    artifacts: list[ArtifactFile] = []
