"""Stand-ins for the outside services the examples call: a rate-limited annotation API, IQDB.

- `AnnotationApi`: `GET /genes/{gene}/annotations?page=N` answers a deterministic page of the
  gene's annotations (`annotations_of(gene)`, PAGE_SIZE a page, `next_page` null on the last),
  404 for a gene named `unknown-*`, and 429 with Retry-After when a request would be the
  LIMIT+1th within WINDOW_S over all clients, as NCBI's E-utilities do above 3 requests a second.
- `IqdbIndex`: `POST /images/{image_id}` with a multipart `file` field records the image's
  SHA-256 and answers `{"post_id", "hash"}`; `fail_next(n, 503)` makes the next n answer 503.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from dataclasses import dataclass

from aiohttp import web

from tests.support.app_server import AppServer

PAGE_SIZE = 2
LIMIT = 3
# A client-side limiter keeps starts 1 s apart by Redis' clock; the requests reach us a few
# milliseconds later, unevenly. The slack keeps that jitter from counting as a breach, while a
# client that does not pace itself still sends its 4th request within milliseconds.
JITTER_S = 0.2
WINDOW_S = 1.0 - JITTER_S


def annotations_of(gene: str) -> list[dict[str, object]]:
    """The gene's annotations: 1-5 terms derived from its name, the same on every call."""
    digest = hashlib.sha256(gene.encode()).digest()
    return [
        {"term": f"GO:{int.from_bytes(digest[i : i + 3], 'big') % 10**7:07d}", "score": digest[i]}
        for i in range(1 + digest[0] % 5)
    ]


def pages_of(gene: str) -> int:
    """How many pages the gene's annotations take."""
    return -(-len(annotations_of(gene)) // PAGE_SIZE)


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One request the annotation API received (`at` is time.monotonic())."""

    gene: str
    page: int
    status: int
    at: float


class AnnotationApi(AppServer):
    """The annotation API at `url`; `requests` lists what it was asked, 429s included."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._requests: list[ApiRequest] = []
        self._accepted: collections.deque[float] = collections.deque()

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/genes/{gene}/annotations", self._annotations)]

    @property
    def requests(self) -> list[ApiRequest]:
        with self._lock:
            return list(self._requests)

    def throttled(self) -> int:
        """How many requests were answered 429."""
        return sum(r.status == 429 for r in self.requests)

    def served(self) -> collections.Counter[tuple[str, int]]:
        """How many times each (gene, page) was answered 200."""
        return collections.Counter((r.gene, r.page) for r in self.requests if r.status == 200)

    def reset(self) -> None:
        """Forget the requests so far (the rate window too)."""
        with self._lock:
            self._requests.clear()
            self._accepted.clear()

    async def _annotations(self, request: web.Request) -> web.Response:
        gene = request.match_info["gene"]
        page = int(request.query.get("page", "1"))
        now = time.monotonic()
        with self._lock:
            while self._accepted and self._accepted[0] <= now - WINDOW_S:
                self._accepted.popleft()
            throttled = len(self._accepted) >= LIMIT
            if not throttled:
                self._accepted.append(now)
            status = 429 if throttled else 404 if gene.startswith("unknown-") else 200
            self._requests.append(ApiRequest(gene, page, status, now))
        if status == 429:
            return web.json_response(
                {"error": "too many requests"}, status=429, headers={"Retry-After": "1"}
            )
        if status == 404:
            return web.json_response({"error": f"no gene {gene}"}, status=404)
        items = annotations_of(gene)
        last = pages_of(gene)
        body = {
            "gene": gene,
            "page": page,
            "items": items[(page - 1) * PAGE_SIZE : page * PAGE_SIZE],
            "next_page": page + 1 if page < last else None,
        }
        return web.json_response(body)


@dataclass(frozen=True, slots=True)
class IndexedImage:
    """One upload the IQDB stand-in received."""

    image_id: int
    sha256: str
    status: int


class IqdbIndex(AppServer):
    """The IQDB stand-in at `url`; `uploads` lists every POST, refused ones included."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._uploads: list[IndexedImage] = []
        self._failures: list[int] = []

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/images/{image_id}", self._add)]

    @property
    def uploads(self) -> list[IndexedImage]:
        with self._lock:
            return list(self._uploads)

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next `count` uploads with `status`."""
        with self._lock:
            self._failures.extend([status] * count)

    async def _add(self, request: web.Request) -> web.Response:
        image_id = int(request.match_info["image_id"])
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return web.json_response({"error": "a multipart 'file' field is required"}, status=400)
        digest = hashlib.sha256(upload.file.read()).hexdigest()
        with self._lock:
            status = self._failures.pop(0) if self._failures else 200
            self._uploads.append(IndexedImage(image_id, digest, status))
        if status != 200:
            return web.json_response({"error": "index busy"}, status=status)
        return web.json_response({"post_id": image_id, "hash": digest})
