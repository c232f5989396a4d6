"""An image board's jobs on Downlink (they ran on arq): thumbnails and variants with Pillow.

arq ran them with 3 tries, a 5-minute timeout, a backoff of 5 s, 10 s, 15 s ... and 10 jobs at
once; here that is the tasks' own policy and `downlink worker --tasks examples.imageboard.tasks
--max-jobs 10`. Pillow is CPU work in plain functions, so they are sync: each runs in a thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps

from downlink import Permanent, task

THUMBNAIL_SIZE = (250, 200)
VARIANT_WIDTHS = {"medium": 800, "large": 1600}


@task(name="create_thumbnail", max_tries=3, timeout_s=300, retry_backoff_s=5, backoff="linear")
def create_thumbnail(source: str, target: str) -> dict[str, object]:
    """Exactly 250x200: scaled to cover, then centre-cropped."""
    with _opened(source) as image:
        thumbnail = ImageOps.fit(image.convert("RGB"), THUMBNAIL_SIZE, Image.Resampling.LANCZOS)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    thumbnail.save(target, "JPEG", quality=85)
    return {"path": target, "width": thumbnail.width, "height": thumbnail.height}


@task(name="create_variant", max_tries=3, timeout_s=300, retry_backoff_s=5, backoff="linear")
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


def _opened(source: str) -> Image.Image:
    try:
        return Image.open(source)
    except FileNotFoundError:
        raise Permanent(f"no image at {source}") from None
    except OSError as exc:  # Pillow's "cannot identify image file"
        raise Permanent(f"{source} is not an image: {exc}") from None
