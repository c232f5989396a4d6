"""What a task or job handle holds, whichever client made it: the id and the first answer.

The handles' methods live beside their clients (asynchronous.py, synchronous.py), since one set
is awaited and the other not; each is one call into its client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from downlink.client.models import Enqueued, Submitted

ClientT = TypeVar("ClientT")


class TaskRef(Generic[ClientT]):
    """A task a client queued (or named by its id): `enqueued` is what enqueueing answered."""

    def __init__(self, client: ClientT, enqueued: Enqueued | str) -> None:
        self._client = client
        self.task_id = enqueued if isinstance(enqueued, str) else enqueued.task_id
        self.enqueued = None if isinstance(enqueued, str) else enqueued

    @property
    def queue_position(self) -> int | None:
        """Where enqueueing placed it; None for a handle made from an id."""
        return None if self.enqueued is None else self.enqueued.queue_position

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.task_id!r})"


class JobRef(Generic[ClientT]):
    """A download job a client submitted (or named by its id): `submitted` is what submitting
    answered (queue position, estimated time)."""

    def __init__(self, client: ClientT, submitted: Submitted | str) -> None:
        self._client = client
        self.job_id = submitted if isinstance(submitted, str) else submitted.job_id
        self.submitted = None if isinstance(submitted, str) else submitted

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.job_id!r})"
