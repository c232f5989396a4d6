"""What a job asks for: the body of POST /api/v1/downloads/download, and the arguments of a
workflow's download step (services.gateway.workflows), checked by the same rules.

Inputs forbid unknown fields, so a typo in a field name is an error, not a silent default.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from services.gateway.jobs.records import NewFile, NewJob
from services.gateway.jobs.validation import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    NUL,
    NUL_PROBLEM,
    composite_problem,
    metadata_problem,
    url_problem,
)
from shared.composites import CompositeKind
from shared.ids import UserId

MAX_FILES_PER_JOB = 10_000

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

    kind: CompositeKind
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
            if file.filename is not None and NUL in file.filename:
                return f"files[{index}].filename: {NUL_PROBLEM}"
        return None

    def requested_files(self) -> list[FileRequest]:
        """Every file of the job in submission order: `urls` first, then `files`."""
        return [FileRequest(url=url) for url in self.urls] + list(self.files)

    def new_job(self, user_id: UserId, *, idempotency_key: str | None = None) -> NewJob:
        """The job to write for `user_id`."""
        return NewJob(
            user_id=user_id,
            priority=self.priority,
            files=[
                NewFile(
                    url=file.url,
                    filename=file.filename,
                    sha256=file.sha256.lower() if file.sha256 else None,
                )
                for file in self.requested_files()
            ],
            metadata=self.metadata,
            options=self.options(),
            idempotency_key=idempotency_key,
            timeout_s=self.timeout_s,
        )

    def options(self) -> dict[str, Any]:
        """The follow-up work the job asked for, as stored in jobs.options."""
        return {
            name: msgspec.to_builtins(value)
            for name in ("process", "composites", "export")
            if (value := getattr(self, name)) is not None
        }
