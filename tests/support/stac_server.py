"""A real STAC API on 127.0.0.1 for tests: a static catalogue of `Capture`s and their band files.

Routes: `/` (landing page, conformsTo core, collections, features, item-search with query and
filter), `/conformance`, `/collections`, `/collections/{id}`, `/collections/{id}/items`,
`/search` (GET and POST) and `/assets/{item}/{band}.tif` (the FileServer's file route: Range,
ETag, HEAD, request records). A search honours `collections`, `ids`, `bbox` (intersecting the
item's bbox), `datetime` (an instant or an interval, open ends as `..` or empty), `limit` with a
`next` link (a `token` offset; for POST a merged body), `query` (eq, neq, lt, lte, gt, gte, in)
and a CQL2-JSON `filter` (and, =, <>, <, <=, >, >=). Anything else is a 400 naming the parameter.

The `stac_api` fixture serves `default_captures` (tests/support/sentinel.py); import it into a
test module or conftest.py.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web

from tests.support.file_server import FileServer
from tests.support.sentinel import Capture, default_captures

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from pathlib import Path

DEFAULT_LIMIT = 10
MAX_LIMIT = 10_000
CONFORMS_TO = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "https://api.stacspec.org/v1.0.0/item-search#filter",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
]
Compare = Callable[[Any, Any], bool]
QUERY_OPS: dict[str, Compare] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
    "in": lambda value, options: value in options,
}
CQL2_OPS: dict[str, Compare] = {
    "=": operator.eq,
    "<>": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
GEOJSON = "application/geo+json"


class SearchError(ValueError):
    """A search parameter this API cannot honour; the message names it."""


@dataclass(frozen=True, kw_only=True)
class Search:
    """A parsed item search."""

    collections: frozenset[str] | None = None
    ids: frozenset[str] | None = None
    bbox: tuple[float, float, float, float] | None = None
    start: datetime | None = None
    end: datetime | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    query: Mapping[str, Mapping[str, Any]] | None = None
    filter: Mapping[str, Any] | None = None

    def matches(self, item: Mapping[str, Any]) -> bool:
        """Whether `item` passes every filter of the search."""
        properties = item["properties"]
        when = _instant(properties["datetime"], "datetime")
        return (
            (self.collections is None or item["collection"] in self.collections)
            and (self.ids is None or item["id"] in self.ids)
            and (self.bbox is None or _intersects(self.bbox, item["bbox"]))
            and (self.start is None or when >= self.start)
            and (self.end is None or when <= self.end)
            and all(
                name in properties and QUERY_OPS[op](properties[name], value)
                for name, ops in (self.query or {}).items()
                for op, value in ops.items()
            )
            and (self.filter is None or _cql2(self.filter, properties))
        )


def _intersects(a: tuple[float, float, float, float], b: list[float]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _instant(text: str, field: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise SearchError(f"{field}: not an RFC 3339 date-time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _cql2(expression: Mapping[str, Any], properties: Mapping[str, Any]) -> bool:
    op, args = expression.get("op"), expression.get("args")
    if not isinstance(args, list):
        raise SearchError("filter: every expression needs an `args` list")
    if op == "and":
        return all(_cql2(arg, properties) for arg in args)
    name = args[0].get("property") if len(args) == 2 and isinstance(args[0], dict) else None
    if op not in CQL2_OPS or not isinstance(name, str):
        raise SearchError(f"filter: unsupported expression {json.dumps(expression)}")
    return name in properties and CQL2_OPS[op](properties[name], args[1])


def _strings(value: Any, field: str) -> frozenset[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise SearchError(f"{field}: expected a list of strings")
    return frozenset(items)


def _bbox(value: Any) -> tuple[float, float, float, float]:
    try:
        numbers = [float(v) for v in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        raise SearchError("bbox: expected 4 numbers") from None
    if len(numbers) != 4 or numbers[0] > numbers[2] or numbers[1] > numbers[3]:
        raise SearchError("bbox: expected west,south,east,north with west <= east")
    return numbers[0], numbers[1], numbers[2], numbers[3]


def _interval(value: Any) -> tuple[datetime | None, datetime | None]:
    if not isinstance(value, str):
        raise SearchError("datetime: expected a string")
    if "/" not in value:
        instant = _instant(value, "datetime")
        return instant, instant
    first, _, last = value.partition("/")
    start = None if first in {"", ".."} else _instant(first, "datetime")
    end = None if last in {"", ".."} else _instant(last, "datetime")
    if start is None and end is None:
        raise SearchError("datetime: an interval needs at least one end")
    return start, end


def _json_param(value: Any, field: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise SearchError(f"{field}: not JSON") from None
    if not isinstance(value, dict):
        raise SearchError(f"{field}: expected a JSON object")
    return value


def _query(value: Any) -> dict[str, Any]:
    query = _json_param(value, "query")
    for name, ops in query.items():
        if not isinstance(ops, dict) or not set(ops) <= set(QUERY_OPS):
            raise SearchError(f"query.{name}: operators are {', '.join(QUERY_OPS)}")
    return query


def _int(value: Any, field: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise SearchError(f"{field}: expected an integer") from None
    if not low <= number <= high:
        raise SearchError(f"{field}: must be {low} to {high}")
    return number


def parse_search(params: Mapping[str, Any], default_limit: int = DEFAULT_LIMIT) -> Search:
    """A Search from GET query parameters (strings) or a POST body (JSON values)."""
    known = {"collections", "ids", "bbox", "datetime", "limit", "token", "query", "filter"}
    if unknown := set(params) - known - {"filter-lang"}:
        raise SearchError(f"{', '.join(sorted(unknown))}: not supported by this API")
    lang = params.get("filter-lang", "cql2-json")
    if "filter" in params and lang != "cql2-json":
        raise SearchError(f"filter-lang: only cql2-json is supported, not {lang!r}")
    start, end = _interval(params["datetime"]) if "datetime" in params else (None, None)
    return Search(
        collections=_strings(params["collections"], "collections")
        if "collections" in params
        else None,
        ids=_strings(params["ids"], "ids") if "ids" in params else None,
        bbox=_bbox(params["bbox"]) if "bbox" in params else None,
        start=start,
        end=end,
        limit=_int(params.get("limit", default_limit), "limit", 1, MAX_LIMIT),
        offset=_int(params.get("token", 0), "token", 0, 1 << 31),
        query=_query(params["query"]) if "query" in params else None,
        filter=_json_param(params["filter"], "filter") if "filter" in params else None,
    )


class StacServer(FileServer):
    """Serve `captures` (whose files lie under `root`) as a STAC API; see the module docstring."""

    def __init__(
        self, root: Path, captures: list[Capture], *, default_limit: int = DEFAULT_LIMIT
    ) -> None:
        super().__init__(root)
        self.captures = captures
        self.default_limit = default_limit  # the page size of a search that sends no `limit`
        self.items: list[dict[str, Any]] = []

    def start(self) -> None:
        """Bind, then describe the captures with asset hrefs on this server."""
        super().start()
        self.items = [capture.item(self.url) for capture in self.captures]

    def capture(self, capture_id: str) -> Capture:
        """The capture with id `capture_id`."""
        return next(c for c in self.captures if c.id == capture_id)

    def routes(self) -> list[web.RouteDef]:
        return [
            *super().routes(),
            web.get("/", self._landing),
            web.get("/conformance", self._conformance),
            web.get("/collections", self._collections),
            web.get("/collections/{id}", self._collection),
            web.get("/collections/{id}/items", self._collection_items),
            web.get("/search", self._search_get),
            web.post("/search", self._search_post),
            web.get("/assets/{name:.+}", self._asset),
        ]

    # -- documents -------------------------------------------------------------------------

    def _link(self, rel: str, path: str, media: str = "application/json") -> dict[str, str]:
        return {"rel": rel, "href": f"{self.url}{path}", "type": media}

    def _collection_doc(self, collection_id: str) -> dict[str, Any]:
        members = [item for item in self.items if item["collection"] == collection_id]
        boxes = [item["bbox"] for item in members]
        times = sorted(item["properties"]["datetime"] for item in members)
        path = f"/collections/{collection_id}"
        return {
            "type": "Collection",
            "stac_version": "1.0.0",
            "id": collection_id,
            "description": f"Test captures of {collection_id}",
            "license": "proprietary",
            "extent": {
                "spatial": {
                    "bbox": [
                        [
                            min(b[0] for b in boxes),
                            min(b[1] for b in boxes),
                            max(b[2] for b in boxes),
                            max(b[3] for b in boxes),
                        ]
                    ]
                },
                "temporal": {"interval": [[times[0], times[-1]]]},
            },
            "links": [
                self._link("self", path),
                self._link("root", "/"),
                self._link("items", f"{path}/items", GEOJSON),
            ],
        }

    def _collection_ids(self) -> list[str]:
        return sorted({item["collection"] for item in self.items})

    def _page(self, request: web.Request, search: Search) -> web.Response:
        matched = [item for item in self.items if search.matches(item)]
        page = matched[search.offset : search.offset + search.limit]
        links: list[dict[str, Any]] = [self._link("root", "/")]
        following = search.offset + search.limit
        if following < len(matched):
            if request.method == "POST":
                href = f"{self.url}{request.path}"
                body = {"token": str(following)}
                links.append(
                    {"rel": "next", "href": href, "method": "POST", "body": body, "merge": True}
                )
            else:
                url = request.url.update_query(token=str(following))
                links.append({"rel": "next", "href": f"{self.url}{url.path_qs}", "type": GEOJSON})
        document = {
            "type": "FeatureCollection",
            "features": page,
            "links": links,
            "numberMatched": len(matched),
            "numberReturned": len(page),
        }
        return web.json_response(document, content_type=GEOJSON)

    # -- handlers --------------------------------------------------------------------------

    async def _landing(self, request: web.Request) -> web.Response:
        links = [
            self._link("self", "/"),
            self._link("root", "/"),
            self._link("conformance", "/conformance"),
            self._link("data", "/collections"),
            {**self._link("search", "/search", GEOJSON), "method": "GET"},
            {**self._link("search", "/search", GEOJSON), "method": "POST"},
            *(self._link("child", f"/collections/{c}") for c in self._collection_ids()),
        ]
        return web.json_response(
            {
                "type": "Catalog",
                "stac_version": "1.0.0",
                "id": "downlink-test-stac",
                "description": "A static STAC API for Downlink's tests",
                "conformsTo": CONFORMS_TO,
                "links": links,
            }
        )

    async def _conformance(self, request: web.Request) -> web.Response:
        return web.json_response({"conformsTo": CONFORMS_TO})

    async def _collections(self, request: web.Request) -> web.Response:
        collections = [self._collection_doc(c) for c in self._collection_ids()]
        links = [self._link("self", "/collections"), self._link("root", "/")]
        return web.json_response({"collections": collections, "links": links})

    async def _collection(self, request: web.Request) -> web.Response:
        collection_id = request.match_info["id"]
        if collection_id not in self._collection_ids():
            return _error(404, "NotFound", f"no collection {collection_id!r}")
        return web.json_response(self._collection_doc(collection_id))

    async def _collection_items(self, request: web.Request) -> web.Response:
        collection_id = request.match_info["id"]
        if collection_id not in self._collection_ids():
            return _error(404, "NotFound", f"no collection {collection_id!r}")
        return self._searched(request, {**request.query, "collections": collection_id})

    async def _search_get(self, request: web.Request) -> web.Response:
        return self._searched(request, dict(request.query))

    async def _search_post(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "InvalidParameterValue", "body: not JSON")
        if not isinstance(body, dict):
            return _error(400, "InvalidParameterValue", "body: expected a JSON object")
        return self._searched(request, body)

    def _searched(self, request: web.Request, params: Mapping[str, Any]) -> web.Response:
        try:
            return self._page(request, parse_search(params, self.default_limit))
        except SearchError as exc:
            return _error(400, "InvalidParameterValue", str(exc))

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_file(request, request.match_info["name"])


def _error(status: int, code: str, description: str) -> web.Response:
    return web.json_response({"code": code, "description": description}, status=status)


@pytest.fixture
def stac_api(tmp_path: Path) -> Iterator[StacServer]:
    """A STAC API on 127.0.0.1 serving `default_captures`; `.url`, `.captures` (with arrays)."""
    root = tmp_path / "stac"
    with StacServer(root, default_captures(root)) as server:
        yield server
