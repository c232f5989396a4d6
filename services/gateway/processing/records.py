"""Processing as the record knows it: artifacts, per-file outcomes, composites, their counts."""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class ProcessingCounts(msgspec.Struct, frozen=True, kw_only=True):
    """Processing of a job that asked for it: per-file steps and job-level composites.

    `files_total` counts the files whose processing was queued (once their download ended).
    """

    files_total: int
    files_completed: int
    files_failed: int
    composites_total: int
    composites_completed: int
    composites_failed: int


class ArtifactRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An output stored by the processor."""

    artifact_id: str
    kind: str
    filepath: str
    size: int
    sha256: str | None
    content_type: str | None
    metadata: dict[str, Any] | None = None


class FileArtifactsRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What processing made of one file; `errors` names each failed step."""

    status: Literal["pending", "completed", "failed"]
    error: str | None = None
    errors: dict[str, str] = {}
    metadata: dict[str, Any] | None = None
    thumbnail: ArtifactRecord | None = None
    cog: ArtifactRecord | None = None


class CompositeRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One job-level composite and, once completed, its files."""

    composite_id: str
    kind: str
    bands: dict[str, str]
    bounds: list[float] | None = None
    status: Literal["pending", "running", "completed", "failed"]
    error: str | None = None
    artifacts: list[ArtifactRecord] = []
