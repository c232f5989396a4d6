"""The exception hierarchy of Downlink, and the mapping of library errors onto it.

DownlinkError
├── ConfigError          a DOWNLINK_* variable is missing or malformed
├── PermanentError       retrying cannot help: dead-letter now
│   ├── BlockedAddress   the target resolves to a refused network
│   ├── HTTPStatusError  404, 403, 410 and other final statuses
│   ├── ChecksumMismatch the bytes do not hash to the expected SHA-256
│   ├── TooLarge         over DOWNLINK_MAX_FILE_SIZE
│   └── PoisonMessage    a stream entry that cannot be decoded
├── TransientError       timeouts, 5xx, resets: retry with backoff
└── JobCancelled         the job was cancelled while the work was queued or running
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class DownlinkError(Exception):
    """Base of every error Downlink raises on purpose."""


class ConfigError(DownlinkError):
    """A configuration variable is missing or malformed; the message names it."""


class PermanentError(DownlinkError):
    """Retrying cannot help."""


class BlockedAddress(PermanentError):
    """The target resolves to a loopback, private, link-local or metadata address."""


class HTTPStatusError(PermanentError):
    """The server answered a final error status."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"HTTP {status} from {url}")
        self.status = status


class ChecksumMismatch(PermanentError):
    """The stored bytes do not hash to the SHA-256 the request expected."""


class TooLarge(PermanentError):
    """The file is over the configured maximum size."""


class PoisonMessage(PermanentError):
    """A stream entry whose body cannot be decoded."""


class TransientError(DownlinkError):
    """A failure that may pass: retry with backoff.

    `retry_after_s` carries a server's Retry-After when it gave one.
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class JobCancelled(DownlinkError):
    """The job was cancelled; the work is dropped without retry."""


@contextlib.contextmanager
def map_errors(url: str) -> Iterator[None]:
    """Convert aiohttp and OS errors raised while fetching `url` into the hierarchy."""
    # Imported here: everything imports this module, and `downlink token create` or the
    # gateway must not load aiohttp for it.
    import aiohttp

    try:
        yield
    except DownlinkError:
        raise
    except aiohttp.TooManyRedirects as exc:
        raise PermanentError(f"too many redirects from {url}") from exc
    except aiohttp.InvalidURL as exc:
        raise PermanentError(f"invalid URL {url}: {exc}") from exc
    except TimeoutError as exc:
        raise TransientError(f"timed out fetching {url}") from exc
    except aiohttp.ClientError as exc:
        raise TransientError(f"{type(exc).__name__} fetching {url}: {exc}") from exc
    except ConnectionError as exc:
        raise TransientError(f"connection error fetching {url}: {exc}") from exc
