"""The processor's CPU work: sync, picklable functions that run in pool workers, never the loop.

Each takes plain paths and values and returns a JSON-ready dict of facts about what it made.
Input the step cannot use raises ProcessingError with a message for people; anything else is a
bug or an outage and propagates (the consumer then retries the message).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np
import rasterio
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from rasterio._err import CPLE_BaseError
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles

from services.processor.rasters import (
    WGS84,
    AlignedBand,
    Grid,
    ProcessingError,
    display_bands,
    needs_stretch,
    open_raster,
    out_shape,
    percentile_limits,
    read_decimated,
    read_quicklook,
    reference_grid,
    to_uint8,
)
from services.processor.sniff import PICTURE_KINDS, RASTER_KINDS, sniff

if TYPE_CHECKING:
    from numpy.typing import NDArray

THUMBNAIL_MAX_PX = 256
PREVIEW_MAX_PX = 1024
NDVI_NODATA = -9999.0
COG_BLOCK_PX = 512
# GDAL's block cache per worker: large rasters stream through it instead of piling up in RAM.
GDAL_CACHE_MB = 64
# Worker processes exit when the service that spawned them is gone (a SIGKILL leaves no one
# to shut the pool down); checked this often.
_EXIF_TAGS = (
    "Make",
    "Model",
    "Software",
    "DateTime",
    "Orientation",
    "XResolution",
    "YResolution",
    "Artist",
    "Copyright",
    "ImageDescription",
)
_EXIF_IFD_TAGS = ("DateTimeOriginal", "ExposureTime", "FNumber", "ISOSpeedRatings", "FocalLength")
COG_CONTENT_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

P = ParamSpec("P")
R = TypeVar("R")


# --- the worker process -----------------------------------------------------------------------


def init_worker(parent_pid: int) -> None:
    """Set up a pool worker: GDAL limits (the pool itself sees to signals and its parent)."""
    os.environ.setdefault("GDAL_CACHEMAX", str(GDAL_CACHE_MB))
    # No directory listing per open: sidecar files are not expected, and listing a folder of
    # thousands of downloads on every open is slow.
    os.environ.setdefault("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")


def _input_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn GDAL's and Pillow's complaints about the input into ProcessingError."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except ProcessingError:
            raise
        except (RasterioError, CPLE_BaseError) as exc:
            raise ProcessingError(f"unreadable raster: {exc}") from None
        except UnidentifiedImageError as exc:
            raise ProcessingError(f"unreadable image: {exc}") from None
        except Image.DecompressionBombError as exc:
            raise ProcessingError(f"image too large to decode safely: {exc}") from None
        except (OSError, SyntaxError) as exc:
            # Pillow says "image file is truncated" and friends as OSError or SyntaxError.
            if isinstance(exc, FileNotFoundError):
                raise
            raise ProcessingError(f"corrupt input: {exc}") from None

    return wrapper


# --- metadata ---------------------------------------------------------------------------------


@_input_errors
def extract_metadata(path: str) -> dict[str, Any]:
    """Facts of a raster (GDAL), a picture (Pillow, EXIF) or anything else (type, size)."""
    source = Path(path)
    detected = sniff(source)
    facts: dict[str, Any] = {
        "content_type": detected.content_type,
        "format": detected.kind,
        "size": source.stat().st_size,
    }
    if detected.kind in PICTURE_KINDS:
        return facts | _picture_metadata(source)
    if detected.kind in RASTER_KINDS:
        with open_raster(path) as dataset:
            return facts | _raster_metadata(dataset)
    return facts | {"type": "other"}


def _raster_metadata(dataset: Any) -> dict[str, Any]:
    crs = dataset.crs
    bounds = list(dataset.bounds)
    wgs84 = None
    if crs is not None:
        wgs84 = list(transform_bounds(crs, WGS84, *dataset.bounds, densify_pts=21))
    nodata = dataset.nodata
    return {
        "type": "raster",
        "driver": dataset.driver,
        "crs": crs.to_string() if crs is not None else None,
        "epsg": crs.to_epsg() if crs is not None else None,
        "bounds": bounds,
        "bounds_wgs84": wgs84,
        "width": dataset.width,
        "height": dataset.height,
        "count": dataset.count,
        "dtypes": list(dataset.dtypes),
        # NaN is no JSON number; the string keeps "nodata is NaN" apart from "no nodata".
        "nodata": "nan" if nodata is not None and np.isnan(nodata) else nodata,
        "transform": list(dataset.transform)[:6],
        "resolution": list(dataset.res),
        "overviews": dataset.overviews(1) if dataset.count else [],
        "block_shapes": [list(shape) for shape in dataset.block_shapes],
        "compression": dataset.compression.value if dataset.compression else None,
        "interleave": dataset.interleaving.value if dataset.interleaving else None,
        "colorinterp": [colour.name for colour in dataset.colorinterp],
        "descriptions": list(dataset.descriptions),
    }


def _picture_metadata(path: Path) -> dict[str, Any]:
    with Image.open(path) as image:
        exif = image.getexif()
        tags: dict[str, Any] = {}
        names = {tag.name: tag.value for tag in ExifTags.Base}
        for name in _EXIF_TAGS:
            if (value := exif.get(names[name])) is not None:
                tags[name] = _exif_value(value)
        sub_ifd = exif.get_ifd(ExifTags.IFD.Exif)
        for name in _EXIF_IFD_TAGS:
            if (value := sub_ifd.get(names[name])) is not None:
                tags[name] = _exif_value(value)
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        if gps:
            tags["GPS"] = {ExifTags.GPSTAGS.get(k, str(k)): _exif_value(v) for k, v in gps.items()}
        return {
            "type": "image",
            "driver": image.format,
            "width": image.width,
            "height": image.height,
            "mode": image.mode,
            "bands": list(image.getbands()),
            "exif": tags,
        }


def _exif_value(value: Any) -> Any:
    """EXIF values as JSON: rationals as floats, bytes as text, tuples as lists."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace").rstrip("\x00")
    if isinstance(value, tuple | list):
        return [_exif_value(item) for item in value]
    if isinstance(value, str | int) or value is None:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return str(value)
    return None if np.isnan(number) else number


# --- thumbnail --------------------------------------------------------------------------------


@_input_errors
def make_thumbnail(src: str, dst: str, max_px: int = THUMBNAIL_MAX_PX) -> dict[str, Any]:
    """A PNG quicklook at most `max_px` on the long side, written to `dst`."""
    detected = sniff(Path(src))
    if detected.kind in PICTURE_KINDS:
        return _picture_thumbnail(src, dst, max_px)
    if detected.kind not in RASTER_KINDS:
        raise ProcessingError(
            f"not a raster or image (detected {detected.content_type}); no thumbnail"
        )
    with open_raster(src) as dataset:
        return _raster_quicklook(dataset, dst, max_px)


def _picture_thumbnail(src: str, dst: str, max_px: int) -> dict[str, Any]:
    with Image.open(src) as image:
        # JPEG decodes at 1/2, 1/4 or 1/8 scale straight away: a 100 MP photo never lands whole.
        image.draft("RGB", (max_px, max_px))
        picture = ImageOps.exif_transpose(image)
        picture.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
        if picture.mode not in ("RGB", "RGBA", "L", "LA"):
            has_alpha = "A" in picture.getbands() or "transparency" in picture.info
            picture = picture.convert("RGBA" if has_alpha else "RGB")
        picture.save(dst, format="PNG", optimize=True)
        return {"width": picture.width, "height": picture.height, "mode": picture.mode}


def _raster_quicklook(dataset: Any, dst: str, max_px: int) -> dict[str, Any]:
    indexes = display_bands(dataset)
    shape = out_shape(dataset.width, dataset.height, max_px)
    data = read_quicklook(dataset, indexes, shape)
    stretch: list[list[float]] = []
    channels = []
    for position, dtype in enumerate(dataset.dtypes[index - 1] for index in indexes):
        band = data[position]
        if needs_stretch(dtype):
            low, high = percentile_limits(band)
        else:
            low, high = 0.0, 255.0
        stretch.append([low, high])
        channels.append(to_uint8(band, low, high) if needs_stretch(dtype) else _byte_band(band))
    pixels = np.dstack(channels) if len(channels) == 3 else channels[0]
    mode = "RGB" if len(channels) == 3 else "L"
    Image.fromarray(pixels).save(dst, format="PNG", optimize=True)
    return {
        "width": shape[1],
        "height": shape[0],
        "mode": mode,
        "bands": indexes,
        "stretch": stretch,
        "source_overviews": dataset.overviews(indexes[0]),
    }


def _byte_band(band: np.ma.MaskedArray[Any, Any]) -> Any:
    out = np.rint(np.ma.getdata(band)).astype(np.uint8)
    out[np.ma.getmaskarray(band)] = 0
    return out


# --- Cloud-Optimized GeoTIFF ------------------------------------------------------------------


@_input_errors
def make_cog(src: str, dst: str) -> dict[str, Any]:
    """A Cloud-Optimized GeoTIFF of `src` at `dst` (tiled, overviews, DEFLATE), validated."""
    detected = sniff(Path(src))
    if detected.kind not in RASTER_KINDS and detected.kind not in PICTURE_KINDS:
        raise ProcessingError(
            f"not a raster (detected {detected.content_type}); no Cloud-Optimized GeoTIFF"
        )
    with open_raster(src) as dataset:
        _translate_to_cog(dataset, dst)
    return _validated(dst)


def _cog_profile(dtype: str) -> dict[str, Any]:
    profile: dict[str, Any] = dict(cog_profiles.get("deflate"))  # type: ignore[no-untyped-call]
    # Horizontal differencing (2) for integers, floating-point prediction (3) for floats:
    # typically a third smaller on imagery, and still lossless.
    profile["predictor"] = 3 if np.issubdtype(np.dtype(dtype), np.floating) else 2
    profile["blockxsize"] = profile["blockysize"] = COG_BLOCK_PX
    return profile


def _translate_to_cog(dataset: Any, dst: str) -> None:
    categorical = _has_colormap(dataset)
    cog_translate(
        dataset,
        dst,
        _cog_profile(dataset.dtypes[0]),
        # On disk, never in RAM: rio-cogeo would otherwise keep up to 120 Mpx in memory.
        in_memory=False,
        overview_resampling="nearest" if categorical else "average",
        quiet=True,
        config={"GDAL_TIFF_OVR_BLOCKSIZE": str(COG_BLOCK_PX), "GDAL_NUM_THREADS": "1"},
    )


def _has_colormap(dataset: Any) -> bool:
    try:
        dataset.colormap(1)
    except ValueError:
        return False
    return True


def _validated(path: str) -> dict[str, Any]:
    valid, errors, warnings = cog_validate(path, quiet=True)
    if not valid:
        raise ProcessingError(f"the Cloud-Optimized GeoTIFF did not validate: {errors}")
    with rasterio.open(path) as cog:
        return {
            "valid_cog": True,
            "warnings": list(warnings),
            "width": cog.width,
            "height": cog.height,
            "count": cog.count,
            "dtype": cog.dtypes[0],
            "compression": cog.compression.value if cog.compression else None,
            "block_shape": list(cog.block_shapes[0]),
            "overviews": cog.overviews(1),
            "nodata": cog.nodata,
            "crs": cog.crs.to_string() if cog.crs else None,
            "bounds": list(cog.bounds),
        }


# --- composites -------------------------------------------------------------------------------

NDVI_BANDS = ("red", "nir")
RGB_BANDS = ("red", "green", "blue")


@contextlib.contextmanager
def _aligned(
    bands: dict[str, str], roles: tuple[str, ...], bounds: tuple[float, float, float, float] | None
) -> Iterator[tuple[Grid, dict[str, AlignedBand]]]:
    """Open the bands of `roles` aligned on the grid of the first one (cropped to `bounds`)."""
    missing = [role for role in roles if role not in bands]
    if missing:
        raise ProcessingError(f"missing band(s) {', '.join(missing)}; needs {', '.join(roles)}")
    with contextlib.ExitStack() as stack:
        datasets = {role: stack.enter_context(open_raster(bands[role])) for role in roles}
        grid = reference_grid(datasets[roles[0]], bounds)
        aligned = {role: AlignedBand(datasets[role], grid) for role in roles}
        for band in aligned.values():
            stack.callback(band.close)
        yield grid, aligned


def _strip_profile(grid: Grid, *, dtype: str, count: int, nodata: float) -> dict[str, Any]:
    return {
        "driver": "GTiff",
        "dtype": dtype,
        "count": count,
        "width": grid.width,
        "height": grid.height,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": COG_BLOCK_PX,
        "blockysize": COG_BLOCK_PX,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }


@_input_errors
def build_ndvi(
    bands: dict[str, str],
    bounds: tuple[float, float, float, float] | None,
    dst: str,
) -> dict[str, Any]:
    """NDVI = (nir - red) / (nir + red) as a float32 COG; no data where either band has none
    or both are zero."""
    staging = f"{dst}.strips.tif"
    with _aligned(bands, NDVI_BANDS, bounds) as (grid, aligned):
        stats = _write_ndvi_strips(grid, aligned, staging)
        reprojected = [role for role, band in aligned.items() if band.reprojected]
    try:
        with rasterio.open(staging) as strips:
            _translate_to_cog(strips, dst)
    finally:
        Path(staging).unlink(missing_ok=True)
    return _validated(dst) | {
        "kind": "ndvi",
        **stats.facts(),
        "reprojected_bands": reprojected,
        "crop_bounds_wgs84": list(bounds) if bounds else None,
    }


@dataclass
class _NdviStats:
    """Statistics of the valid NDVI values, gathered strip by strip.

    Mean and spread are merged per strip (Chan et al.), which stays exact where a running sum of
    squares would cancel out on large rasters. The std is the population one (numpy's default).
    """

    pixels: int = 0
    valid: int = 0
    low: float = np.inf
    high: float = -np.inf
    mean: float = 0.0
    squares: float = 0.0  # sum of squared deviations from the mean

    def add(self, ndvi: NDArray[np.float32], valid: NDArray[np.bool_]) -> None:
        self.pixels += ndvi.size
        if valid.any():
            values = ndvi[valid].astype(np.float64)
            count, mean = values.size, float(values.mean())
            merged = self.valid + count
            delta = mean - self.mean
            self.squares += float(((values - mean) ** 2).sum()) + (
                delta**2 * self.valid * count / merged
            )
            self.mean += delta * count / merged
            self.valid = merged
            self.low = min(self.low, float(values.min()))
            self.high = max(self.high, float(values.max()))

    def facts(self) -> dict[str, Any]:
        return {
            "valid_pixels": self.valid,
            "nodata_pixels": self.pixels - self.valid,
            "total_pixels": self.pixels,
            "valid_share": self.valid / self.pixels if self.pixels else 0.0,
            "min": self.low if self.valid else None,
            "max": self.high if self.valid else None,
            "mean": self.mean if self.valid else None,
            "std": float(np.sqrt(self.squares / self.valid)) if self.valid else None,
        }


def _write_ndvi_strips(grid: Grid, aligned: dict[str, AlignedBand], staging: str) -> _NdviStats:
    """Write the NDVI of the aligned bands to `staging`, one strip at a time."""
    stats = _NdviStats()
    profile = _strip_profile(grid, dtype="float32", count=1, nodata=NDVI_NODATA)
    with rasterio.open(staging, "w", **profile) as out:
        for window in grid.strips():
            ndvi, valid = _ndvi(aligned["red"].read(window), aligned["nir"].read(window))
            out.write(ndvi, 1, window=window)
            stats.add(ndvi, valid)
    return stats


def _ndvi(
    red: np.ma.MaskedArray[Any, Any], nir: np.ma.MaskedArray[Any, Any]
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """NDVI of one strip (NDVI_NODATA where invalid) and where it is valid."""
    red_values = np.ma.getdata(red).astype(np.float64)
    nir_values = np.ma.getdata(nir).astype(np.float64)
    total_light = nir_values + red_values
    valid = ~(np.ma.getmaskarray(red) | np.ma.getmaskarray(nir)) & (total_light != 0)
    ndvi = np.full(red_values.shape, NDVI_NODATA, dtype=np.float32)
    ndvi[valid] = ((nir_values[valid] - red_values[valid]) / total_light[valid]).astype(np.float32)
    return ndvi, valid


@_input_errors
def build_rgb(
    bands: dict[str, str],
    bounds: tuple[float, float, float, float] | None,
    dst: str,
    preview: str,
    preview_max_px: int = PREVIEW_MAX_PX,
) -> dict[str, Any]:
    """An 8-bit true-colour COG (red, green, blue stretched 2-98 %) and a PNG preview of it."""
    staging = f"{dst}.strips.tif"
    with _aligned(bands, RGB_BANDS, bounds) as (grid, aligned):
        limits = _rgb_limits(grid, aligned)
        _write_rgb_strips(grid, aligned, limits, staging)
        reprojected = [role for role, band in aligned.items() if band.reprojected]
    try:
        with rasterio.open(staging) as strips:
            _translate_to_cog(strips, dst)
            preview_facts = _rgb_preview(strips, preview, preview_max_px)
    finally:
        Path(staging).unlink(missing_ok=True)
    return _validated(dst) | {
        "kind": "rgb",
        "stretch": {role: list(limits[role]) for role in RGB_BANDS},
        "reprojected_bands": reprojected,
        "crop_bounds_wgs84": list(bounds) if bounds else None,
        "preview": preview_facts,
    }


def _rgb_limits(grid: Grid, aligned: dict[str, AlignedBand]) -> dict[str, tuple[float, float]]:
    """The stretch of each colour band, one for the whole image, from a decimated read.

    Strips must not each get their own, or the seams would show.
    """
    sample_shape = out_shape(grid.width, grid.height, PREVIEW_MAX_PX)
    full = Window(0, 0, grid.width, grid.height)
    limits = {}
    for role in RGB_BANDS:
        band = aligned[role]
        if needs_stretch(band.dataset.dtypes[0]):
            limits[role] = percentile_limits(band.read(full, shape=sample_shape))
        else:
            limits[role] = (0.0, 255.0)
    return limits


def _write_rgb_strips(
    grid: Grid,
    aligned: dict[str, AlignedBand],
    limits: dict[str, tuple[float, float]],
    staging: str,
) -> None:
    """Write the stretched colour bands to `staging`, black wherever any band has no data."""
    profile = _strip_profile(grid, dtype="uint8", count=3, nodata=0)
    profile["photometric"] = "RGB"
    with rasterio.open(staging, "w", **profile) as out:
        for window in grid.strips():
            reads = [aligned[role].read(window) for role in RGB_BANDS]
            missing = np.zeros(reads[0].shape, dtype=bool)
            for read in reads:
                missing |= np.ma.getmaskarray(read)
            for index, (role, read) in enumerate(zip(RGB_BANDS, reads, strict=True), 1):
                channel = to_uint8(read, *limits[role])
                channel[missing] = 0
                out.write(channel, index, window=window)


def _rgb_preview(dataset: Any, dst: str, max_px: int) -> dict[str, Any]:
    shape = out_shape(dataset.width, dataset.height, max_px)
    data = read_decimated(dataset, [1, 2, 3], shape, resampling=Resampling.average)
    pixels = np.dstack([np.ma.getdata(data[i]).astype(np.uint8) for i in range(3)])
    Image.fromarray(pixels).save(dst, format="PNG", optimize=True)
    return {"width": shape[1], "height": shape[0], "mode": "RGB"}
