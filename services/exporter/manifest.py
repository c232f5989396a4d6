"""The metadata files of an export: manifest.json, a STAC ItemCollection and SHA256SUMS.

They are made after the data went in, from the digests computed while copying, so they describe
exactly the bytes in the archive; SHA256SUMS is in the format `sha256sum -c` reads.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from services.exporter.stac import STAC_NAME, item_collection

if TYPE_CHECKING:
    from services.exporter.archive import Written
    from shared.events import BuildExport

MANIFEST_NAME = "manifest.json"
SUMS_NAME = "SHA256SUMS"
MANIFEST_VERSION = 1
METADATA_NAMES = (MANIFEST_NAME, STAC_NAME, SUMS_NAME)

_ENCODER = msgspec.json.Encoder(order="deterministic")


def metadata_files(
    command: BuildExport, written: list[Written], *, built_at: float
) -> list[tuple[str, bytes]]:
    """(arcname, bytes) of manifest.json, the STAC items and SHA256SUMS, in that order."""
    digests = {w.arcname: w.sha256 for w in written}
    manifest = _ENCODER.encode(build_manifest(command, digests, built_at=built_at))
    stac = _ENCODER.encode(item_collection(command, digests, built_at=built_at))
    files = [(MANIFEST_NAME, _pretty(manifest)), (STAC_NAME, _pretty(stac))]
    sums = [(w.arcname, w.sha256) for w in written]
    sums += [(name, hashlib.sha256(data).hexdigest()) for name, data in files]
    return [*files, (SUMS_NAME, sha256sums(sums))]


def build_manifest(
    command: BuildExport, digests: dict[str, str], *, built_at: float
) -> dict[str, Any]:
    """What the archive holds: the jobs, then each file and artifact with its provenance."""
    files: list[dict[str, Any]] = []
    artifacts: list[dict[str, Any]] = []
    for item in command.items:
        entry: dict[str, Any] = {
            "path": item.arcname,
            "job_id": item.job_id,
            "size": item.size,
            "sha256": digests.get(item.arcname, item.sha256),
        }
        if item.kind == "file":
            entry |= {"file_id": item.file_id, "url": item.url}
            if item.metadata:
                entry["metadata"] = item.metadata
            files.append(entry)
        else:
            entry |= {
                "artifact_id": item.file_id,
                "kind": item.kind,
                "source_file_id": item.source_file_id,
            }
            if item.metadata:
                entry["metadata"] = item.metadata
            artifacts.append(entry)
    return {
        "manifest_version": MANIFEST_VERSION,
        "export_id": command.export_id,
        "format": command.format,
        "created_at": datetime.fromtimestamp(built_at, tz=UTC).isoformat().replace("+00:00", "Z"),
        "generator": "downlink",
        "jobs": list(command.jobs),
        "files": files,
        "artifacts": artifacts,
        "totals": {
            "files": len(files),
            "artifacts": len(artifacts),
            "bytes": sum(item.size for item in command.items),
        },
        "metadata_files": list(METADATA_NAMES),
    }


def sha256sums(entries: list[tuple[str, str]]) -> bytes:
    """Lines `<hex>  <path>`; names with a backslash or newline escaped as GNU sha256sum does."""
    lines = []
    for name, digest in entries:
        if "\\" in name or "\n" in name or "\r" in name:
            escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
            lines.append(f"\\{digest}  {escaped}\n")
        else:
            lines.append(f"{digest}  {name}\n")
    return "".join(lines).encode()


def _pretty(data: bytes) -> bytes:
    # People open manifest.json in an editor: indent it (msgspec keeps key order).
    return msgspec.json.format(data, indent=2) + b"\n"
