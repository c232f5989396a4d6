"""/dashboard/static/NAME: the dashboard's stylesheet and scripts, served from the repository.

Only the files present at start are served, by name (no paths, so nothing outside the folder).
Not Litestar's static files router: its GET and HEAD handlers share a path, and Litestar
2.25's OPTIONS answer on such a path names one of them only.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Controller, get
from litestar.datastructures import CacheControlHeader
from litestar.params import FromPath
from litestar.response import File

from services.gateway.errors import NotFound

STATIC_DIR = Path(__file__).parent / "static"
_MEDIA_TYPES = {".css": "text/css", ".js": "text/javascript"}
_FILES = {
    path.name: path
    for path in STATIC_DIR.iterdir()
    if path.is_file() and path.suffix in _MEDIA_TYPES
}
# Short: a new release's assets reach open browsers within minutes, with no build step.
_CACHE = CacheControlHeader(max_age=300)


class StaticController(Controller):
    """The dashboard's CSS and JavaScript."""

    path = "/static"

    @get("/{name:str}", cache_control=_CACHE, include_in_schema=False)
    async def asset(self, *, name: FromPath[str]) -> File:
        path = _FILES.get(name)
        if path is None:
            raise NotFound(f"static file {name!r} not found")
        return File(
            path=path, media_type=_MEDIA_TYPES[path.suffix], content_disposition_type="inline"
        )
