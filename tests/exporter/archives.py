"""Check archives the way a person would: extract them with the system's unzip and tar."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

MIB = 1024 * 1024


def need_tools(*names: str) -> None:
    """Skip (fail under CI) when a system tool the check needs is missing."""
    from tests.conftest import IN_CI

    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        message = (
            f"missing system tools: {', '.join(missing)} (apt-get install {' '.join(missing)})"
        )
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


def extract(archive: Path, destination: Path, archive_format: str) -> Path:
    """Extract `archive` into `destination` with `unzip` or `tar`; fails on any complaint."""
    destination.mkdir(parents=True, exist_ok=True)
    if archive_format == "zip":
        need_tools("unzip")
        argv = ["unzip", "-q", str(archive), "-d", str(destination)]
    else:
        need_tools("tar")
        argv = ["tar", "-xzf", str(archive), "-C", str(destination)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{argv[0]} failed ({result.returncode}): {result.stderr}"
    assert result.stderr == "", result.stderr
    return destination


def check_sums(folder: Path) -> list[str]:
    """Run `sha256sum -c SHA256SUMS` in `folder`; returns its lines ("<path>: OK")."""
    need_tools("sha256sum")
    result = subprocess.run(
        ["sha256sum", "--strict", "-c", "SHA256SUMS"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"sha256sum -c failed: {result.stdout}{result.stderr}"
    lines = result.stdout.splitlines()
    assert lines, result.stdout
    assert all(line.endswith(": OK") for line in lines), result.stdout
    return lines


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def same_bytes(left: Path, right: Path) -> bool:
    """Compare two files chunk by chunk (they may be larger than memory allows)."""
    if left.stat().st_size != right.stat().st_size:
        return False
    with left.open("rb") as a, right.open("rb") as b:
        while True:
            chunk = a.read(MIB)
            if chunk != b.read(MIB):
                return False
            if not chunk:
                return True
