"""EarthGazer's backup step: copy a capture's original bands to a second folder, idempotently.

Each file lands whole or not at all (a temp file, fsync, rename, fsync of the folder), and one
already there with the same size and SHA-256 is left alone, so a retried step copies only what
the killed try did not finish. Blocking: an async caller runs it in a worker thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from downlink import Permanent

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

CHUNK_BYTES = 1 << 20


def backup_capture(
    files: Sequence[tuple[str, str]], target_dir: str, capture_id: str
) -> dict[str, Any]:
    """Copy each (name, source path) of `files` to `target_dir/capture_id/name`.

    Returns {copied: [names], skipped: [names already backed up], target: the folder}.
    """
    _check_name(capture_id, "capture_id")
    if not target_dir:
        raise Permanent("target_dir: must not be empty")
    names = [name for name, _ in files]
    for index, (name, source) in enumerate(files):
        _check_name(name, f"files[{index}] name")
        if not Path(source).is_file():
            raise Permanent(f"files[{index}]: no file at {source}")
    if len(set(names)) != len(names):
        raise Permanent(f"files: a name is listed twice: {names}")
    folder = Path(target_dir) / capture_id
    copied: list[str] = []
    skipped: list[str] = []
    attributes = {"earthgazer.capture_id": capture_id, "earthgazer.target": str(folder)}
    with tracer.start_as_current_span("earthgazer.backup", attributes=attributes) as span:
        folder.mkdir(parents=True, exist_ok=True)
        for name, source in files:
            (copied if _backup_file(Path(source), folder / name) else skipped).append(name)
        if copied:
            _fsync_dir(folder)  # the renames are durable only once the folder's entries are
        span.set_attribute("earthgazer.copied", len(copied))
        span.set_attribute("earthgazer.skipped", len(skipped))
    logger.info(
        "backed up a capture",
        extra={"capture_id": capture_id, "copied": len(copied), "skipped": len(skipped)},
    )
    return {"copied": copied, "skipped": skipped, "target": str(folder)}


def _check_name(name: str, field: str) -> None:
    if not name or name in {".", ".."} or any(c in name for c in "/\\\0"):
        raise Permanent(f"{field}: must be a plain file or folder name, got {name!r}")


def _backup_file(source: Path, target: Path) -> bool:
    """Copy `source` to `target` unless an identical file is there; whether it copied."""
    size = source.stat().st_size
    if (
        not target.is_symlink()
        and target.is_file()
        and target.stat().st_size == size
        and _sha256(target) == _sha256(source)
    ):
        return False
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as src:
            while chunk := src.read(CHUNK_BYTES):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
