"""Band composites as data: the roles each kind needs, how a band names a file, what it leaves.

The gateway validates requests and decides when a composite can run from this table; the
processor builds the artifacts it lists. Neither keeps a copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from collections.abc import Sequence

CompositeKind = Literal["ndvi", "rgb"]

# The bands each kind reads, by role.
COMPOSITE_ROLES: dict[str, tuple[str, ...]] = {
    "ndvi": ("red", "nir"),
    "rgb": ("red", "green", "blue"),
}
# The artifacts a successful composite leaves; its end waits for all of them.
ARTIFACTS_OF_COMPOSITE: dict[str, tuple[str, ...]] = {
    "ndvi": ("ndvi",),
    "rgb": ("rgb", "rgb_preview"),
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
