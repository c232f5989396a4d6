"""Where each kind of object lives in storage; every service builds its keys here.

A user's objects share the prefix `<user_id>/`, which is what the gateway checks a requested
path against: downloads by job, processing artifacts beside (never inside) job folders, and
export archives.
"""

from __future__ import annotations

# The file extension of each archive format.
ARCHIVE_EXTENSIONS = {"zip": "zip", "tar.gz": "tar.gz"}


def user_area(user_id: str) -> str:
    """The prefix every key of `user_id`'s objects starts with."""
    return f"{user_id}/"


def file_key(user_id: str, job_id: str, name: str) -> str:
    """A downloaded file: `<user_id>/<job_id>/<name>`."""
    return f"{user_area(user_id)}{job_id}/{name}"


def artifact_prefix(
    user_id: str, job_id: str, *, file_id: str | None = None, composite_id: str | None = None
) -> str:
    """The folder of a file's (or a job-level composite's) processing artifacts."""
    owner = file_id if file_id is not None else f"composites/{composite_id}"
    return f"{user_area(user_id)}artifacts/{job_id}/{owner}"


def archive_key(user_id: str, export_id: str, archive_format: str) -> str:
    """A finished export archive: `<user_id>/exports/<export_id>.<zip|tar.gz>`."""
    return f"{user_area(user_id)}exports/{export_id}.{ARCHIVE_EXTENSIONS[archive_format]}"


def workflow_key(user_id: str, workflow_id: str, name: str) -> str:
    """A file a workflow's step made: `<user_id>/workflows/<workflow_id>/<name>`."""
    return f"{user_area(user_id)}workflows/{workflow_id}/{name}"
