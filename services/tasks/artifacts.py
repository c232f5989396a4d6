"""Files in and out of a task: stored files as local paths, and what a task makes, saved.

    artifacts = Artifacts.from_env()
    async with artifacts.local(file["key"]) as path:      # a download step's file
        ...
    saved = await artifacts.save(out_path, ctx, "stack.tif", "image/tiff; application=geotiff")

A saved file lives under its workflow (`<user>/workflows/<workflow id>/<name>`), or its task
outside one, in the same storage the downloads went to (DOWNLINK_STORAGE_URL). A step that
returns `{"artifacts": [saved, ...]}` has them listed on its workflow (GET /api/v1/workflows/
{id}), served by GET /api/v1/workflows/{id}/artifacts/{name} and packed by its export.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.settings import Settings
from shared.storage import open_storage
from shared.storage.keys import user_area, workflow_key
from shared.storage.staging import Staging

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from services.tasks.context import Context
    from shared.storage import Storage


class Artifacts:
    """A worker's view of storage for its tasks, with a scratch folder for copies."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._staging = Staging(storage, Path(tempfile.gettempdir()))

    @classmethod
    def from_env(cls) -> Artifacts:
        return cls(open_storage(Settings.from_env().storage_url))

    @contextlib.asynccontextmanager
    async def local(self, key: str) -> AsyncIterator[Path]:
        """A local path with the bytes of `key` (the stored file itself on local storage)."""
        with self._staging.workdir() as workdir:
            async with self._staging.source(key, workdir) as path:
                yield path

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        """A scratch folder for a task's outputs, removed afterwards."""
        with self._staging.workdir() as workdir:
            yield workdir

    async def save(
        self, path: Path, ctx: Context, name: str, media_type: str = "application/octet-stream"
    ) -> dict[str, Any]:
        """Store `path` as the workflow's (or the task's) file `name`; what a step lists in its
        result's `artifacts`: name, key, size, sha256 and media type."""
        if ctx.user_id is None:
            raise RuntimeError("a task outside a worker has no storage area to save to")
        key = (
            workflow_key(ctx.user_id, ctx.workflow_id, name)
            if ctx.workflow_id
            else f"{user_area(ctx.user_id)}tasks/{ctx.task_id}/{name}"
        )
        # A part per task and name, so a retried try writes its own bytes again from zero.
        part_id = f"artifact-{ctx.task_id}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
        stored = await self._staging.store(path, key, part_id)
        return {
            "name": name,
            "key": stored.key,
            "size": stored.size,
            "sha256": stored.sha256,
            "media_type": media_type,
            "step": ctx.step,
        }
