"""EarthGazer's backup step: a capture's bands copied whole to a second folder, once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from downlink import Permanent
from examples.earthgazer.backup import backup_capture
from tests.support.sentinel import BANDS, MATCHING_IDS, Capture, default_captures

if TYPE_CHECKING:
    from pathlib import Path

CAPTURE_ID = MATCHING_IDS[0]


@pytest.fixture
def capture(tmp_path: Path) -> Capture:
    return next(c for c in default_captures(tmp_path / "source") if c.id == CAPTURE_ID)


def band_files(capture: Capture) -> list[tuple[str, str]]:
    return [(f"{band}.tif", str(capture.paths[band])) for band in BANDS]


def test_a_backup_copies_every_band_then_skips_them_on_a_second_run(
    capture: Capture, tmp_path: Path
) -> None:
    target = tmp_path / "backup"
    names = [f"{band}.tif" for band in BANDS]

    first = backup_capture(band_files(capture), str(target), CAPTURE_ID)
    copies = {path.name: path.stat().st_ino for path in (target / CAPTURE_ID).iterdir()}
    second = backup_capture(band_files(capture), str(target), CAPTURE_ID)

    assert first == {"copied": names, "skipped": [], "target": str(target / CAPTURE_ID)}
    assert second == {"copied": [], "skipped": names, "target": str(target / CAPTURE_ID)}
    assert sorted(copies) == names  # nothing else: no temp file left behind
    for band in BANDS:
        copy = target / CAPTURE_ID / f"{band}.tif"
        assert copy.read_bytes() == capture.paths[band].read_bytes()
        assert copy.stat().st_ino == copies[copy.name]  # not replaced by the second run


def test_a_backed_up_file_whose_content_differs_is_copied_again(
    capture: Capture, tmp_path: Path
) -> None:
    target = tmp_path / "backup"
    backup_capture(band_files(capture), str(target), CAPTURE_ID)
    same_size = target / CAPTURE_ID / "B04.tif"
    same_size.write_bytes(bytes(len(same_size.read_bytes())))  # same size, other bytes
    truncated = target / CAPTURE_ID / "B08.tif"
    truncated.write_bytes(truncated.read_bytes()[:100])

    result = backup_capture(band_files(capture), str(target), CAPTURE_ID)

    assert result["copied"] == ["B04.tif", "B08.tif"]
    assert result["skipped"] == ["B02.tif", "B03.tif"]
    assert same_size.read_bytes() == capture.paths["B04"].read_bytes()
    assert truncated.read_bytes() == capture.paths["B08"].read_bytes()
    assert sorted(p.name for p in (target / CAPTURE_ID).iterdir()) == [f"{b}.tif" for b in BANDS]


@pytest.mark.parametrize(
    ("capture_id", "name", "field"),
    [
        ("../escape", "B02.tif", "capture_id"),
        ("", "B02.tif", "capture_id"),
        (CAPTURE_ID, "sub/B02.tif", r"files\[1\] name"),
        (CAPTURE_ID, "..", r"files\[1\] name"),
    ],
)
def test_a_name_that_is_not_a_plain_file_name_writes_nothing(
    capture: Capture, tmp_path: Path, capture_id: str, name: str, field: str
) -> None:
    files = band_files(capture)
    files[1] = (name, files[1][1])

    with pytest.raises(Permanent, match=f"^{field}: must be a plain"):
        backup_capture(files, str(tmp_path / "backup"), capture_id)

    assert not (tmp_path / "backup").exists()


def test_a_missing_source_writes_nothing(capture: Capture, tmp_path: Path) -> None:
    files = [*band_files(capture), ("B11.tif", str(tmp_path / "absent.tif"))]

    with pytest.raises(Permanent, match=r"^files\[4\]: no file at .*absent\.tif"):
        backup_capture(files, str(tmp_path / "backup"), CAPTURE_ID)

    assert not (tmp_path / "backup").exists()


def test_a_name_listed_twice_writes_nothing(capture: Capture, tmp_path: Path) -> None:
    files = [*band_files(capture), band_files(capture)[0]]

    with pytest.raises(Permanent, match=r"^files: a name is listed twice"):
        backup_capture(files, str(tmp_path / "backup"), CAPTURE_ID)

    assert not (tmp_path / "backup").exists()
