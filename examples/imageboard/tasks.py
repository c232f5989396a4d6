"""An image board's jobs on Downlink (they ran on arq): thumbnails, variants, IQDB, ratings.

arq ran them with 3 tries, a 5-minute timeout, a backoff of 5 s, 10 s, 15 s ... and 10 jobs at
once; here that is the tasks' own policy and `downlink worker --tasks examples.imageboard.tasks
--max-jobs 10`. Pillow is CPU work in plain functions, so those are sync: each runs in a thread.
The ratings live in the board's own tables (schema.sql), apart from Downlink's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import asyncpg
from PIL import Image, ImageOps

from downlink import Permanent, task

if TYPE_CHECKING:
    from collections.abc import Callable

    from downlink import TaskDefinition

THUMBNAIL_SIZE = (250, 200)
VARIANT_WIDTHS = {"medium": 800, "large": 1600}
IQDB_TIMEOUT = aiohttp.ClientTimeout(total=60)
# Each post starts with this many votes at the site's average, so one 5-star vote does not put
# a new post above one with a hundred 4-star votes.
PRIOR_VOTES = 10
# The prior's mean while the site has no votes at all: the middle of the 1-5 scale.
EMPTY_SITE_MEAN = 3.0
RATE_POST = """
WITH site AS (SELECT coalesce(avg(score), $3)::float8 AS mean FROM imageboard.votes),
     post AS (
         SELECT count(*)::int AS n, coalesce(sum(score), 0)::float8 AS total
         FROM imageboard.votes WHERE post_id = $1
     )
UPDATE imageboard.posts AS p
SET rating = ($2 * site.mean + post.total) / ($2 + post.n), votes = post.n, rated_at = now()
FROM site, post
WHERE p.id = $1
RETURNING p.rating, p.votes
"""


def imageboard_task(name: str) -> Callable[[Callable[..., Any]], TaskDefinition]:
    """arq's policy for every job of the board: 3 tries, 5 minutes each, 5 s, 10 s between."""
    return task(name=name, max_tries=3, timeout_s=300, retry_backoff_s=5, backoff="linear")


@imageboard_task("create_thumbnail")
def create_thumbnail(source: str, target: str) -> dict[str, object]:
    """Exactly 250x200: scaled to cover, then centre-cropped."""
    with _opened(source) as image:
        thumbnail = ImageOps.fit(image.convert("RGB"), THUMBNAIL_SIZE, Image.Resampling.LANCZOS)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    thumbnail.save(target, "JPEG", quality=85)
    return {"path": target, "width": thumbnail.width, "height": thumbnail.height}


@imageboard_task("create_variant")
def create_variant(
    source: str, target: str, variant: Literal["medium", "large"]
) -> dict[str, object]:
    """The image scaled down to the variant's width (never up), its aspect kept."""
    with _opened(source) as image:
        width = min(VARIANT_WIDTHS[variant], image.width)
        height = max(1, round(image.height * width / image.width))
        scaled = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    scaled.save(target, "JPEG", quality=90)
    return {"path": target, "variant": variant, "width": width, "height": height}


@imageboard_task("add_to_iqdb")
async def add_to_iqdb(image_id: int, path: str, iqdb_url: str) -> dict[str, object]:
    """Add the image to the IQDB similarity index (`POST /images/{id}`, a multipart `file`)."""
    try:
        data = await asyncio.to_thread(Path(path).read_bytes)
    except FileNotFoundError:
        raise Permanent(f"no image at {path}") from None
    form = aiohttp.FormData()
    form.add_field("file", data, filename=Path(path).name)
    url = f"{iqdb_url.rstrip('/')}/images/{image_id}"
    async with (
        aiohttp.ClientSession(timeout=IQDB_TIMEOUT) as session,
        session.post(url, data=form) as response,
    ):
        if 400 <= response.status < 500 and response.status != 429:
            raise Permanent(f"IQDB refused image {image_id}: {response.status} {response.reason}")
        # 5xx and 429: the try fails and is retried by the policy.
        response.raise_for_status()
        body: dict[str, Any] = await response.json()
    return {"image_id": image_id, "hash": body.get("hash")}


@imageboard_task("recalculate_rating")
async def recalculate_rating(post_id: int, database_url: str) -> dict[str, object]:
    """Store the Bayesian average of the post's votes as its rating."""
    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow(RATE_POST, post_id, PRIOR_VOTES, EMPTY_SITE_MEAN)
    finally:
        await connection.close()
    if row is None:
        raise Permanent(f"no post {post_id}")
    return {"post_id": post_id, "rating": row["rating"], "votes": row["votes"]}


def _opened(source: str) -> Image.Image:
    try:
        return Image.open(source)
    except FileNotFoundError:
        raise Permanent(f"no image at {source}") from None
    except OSError as exc:  # Pillow's "cannot identify image file"
        raise Permanent(f"{source} is not an image: {exc}") from None
