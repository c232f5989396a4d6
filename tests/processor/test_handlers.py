"""Handlers on real storage and rasters: artifacts stored and announced, errors per step."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, get_args

import pytest
import rasterio
from PIL import Image
from rio_cogeo.cogeo import cog_validate

from services.processor import tasks
from services.processor.handlers import (
    COMPOSITE_OUTPUTS,
    ProcessDeps,
    artifact_id,
    build_composite,
    failure_event,
    process_file,
)
from shared.composites import ARTIFACTS_OF_COMPOSITE, COMPOSITE_ROLES
from shared.errors import JobCancelled
from shared.events import (
    ArtifactCreated,
    BuildComposite,
    CompositeFinished,
    CompositeKind,
    FileProcessed,
    ProcessFile,
    ProcessStep,
)
from shared.ids import FileId, new_file_id
from shared.process_pool import TaskTimeout, WorkerPool
from shared.storage.local import LocalStorage
from shared.storage.staging import Staging
from tests.processor.conftest import JOB, USER, Processor
from tests.processor.imagery import UTM_CRS, write_sentinel_bands

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def bands(tmp_path: Path) -> dict[str, Path]:
    return write_sentinel_bands(tmp_path / "bands")


def _command(
    key: str, *, steps: tuple[str, ...] = ("metadata", "thumbnail", "cog"), file_id: str = ""
) -> ProcessFile:
    return ProcessFile(
        job_id=JOB,
        file_id=FileId(file_id or new_file_id()),
        user_id=USER,
        filepath=key,
        filename=key.rsplit("/", 1)[-1],
        steps=steps,  # type: ignore[arg-type]
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_every_step_stores_and_announces_its_artifact(
    processor: Processor, bands: dict[str, Path]
) -> None:
    key = processor.put(bands["B04"], f"{USER}/{JOB}/B04.tif")
    command = _command(key)

    finished = await process_file(command, processor.deps)

    assert finished == processor.publisher.events[-1]
    assert isinstance(finished, FileProcessed)
    assert finished.errors == {}
    artifacts = {a.kind: a for a in processor.publisher.of(ArtifactCreated)}
    assert list(artifacts) == ["metadata", "thumbnail", "cog"]  # in the order asked
    metadata = artifacts["metadata"]
    assert metadata.filepath is None
    assert metadata.file_id == command.file_id
    assert metadata.metadata is not None
    assert metadata.metadata["crs"] == UTM_CRS
    prefix = f"{USER}/artifacts/{JOB}/{command.file_id}"
    thumbnail = artifacts["thumbnail"]
    assert thumbnail.filepath == f"{prefix}/B04.thumbnail.png"
    assert thumbnail.content_type == "image/png"
    stored_thumbnail = processor.storage.root / thumbnail.filepath
    assert thumbnail.size == stored_thumbnail.stat().st_size
    assert thumbnail.sha256 == _sha256(stored_thumbnail)
    with Image.open(stored_thumbnail) as image:
        assert (image.size, image.mode) == ((256, 256), "L")
    cog = artifacts["cog"]
    assert cog.filepath == f"{prefix}/B04.cog.tif"
    assert cog.content_type == tasks.COG_CONTENT_TYPE
    assert cog.sha256 == _sha256(processor.storage.root / cog.filepath)
    assert cog_validate(str(processor.storage.root / cog.filepath), quiet=True)[0]
    assert {a.artifact_id for a in artifacts.values()} == {
        artifact_id(command.file_id, kind) for kind in ("metadata", "thumbnail", "cog")
    }
    # No scratch files are left behind, and the source is untouched.
    assert list(processor.deps.staging.scratch_root.iterdir()) == []
    assert (processor.storage.root / key).read_bytes() == bands["B04"].read_bytes()


@pytest.mark.parametrize("step", get_args(ProcessStep))
async def test_each_step_asked_alone_makes_just_its_artifact(
    processor: Processor, bands: dict[str, Path], step: str
) -> None:
    command = _command(processor.put(bands["B04"], f"{USER}/{JOB}/B04.tif"), steps=(step,))

    finished = await process_file(command, processor.deps)

    assert finished.errors == {}
    (artifact,) = processor.publisher.of(ArtifactCreated)
    assert (artifact.kind, artifact.artifact_id) == (step, artifact_id(command.file_id, step))


async def test_metadata_is_announced_as_json_with_no_stored_file(
    processor: Processor, bands: dict[str, Path]
) -> None:
    command = _command(processor.put(bands["B04"], f"{USER}/{JOB}/B04.tif"), steps=("metadata",))

    await process_file(command, processor.deps)

    (metadata,) = processor.publisher.of(ArtifactCreated)
    assert metadata.artifact_id == artifact_id(command.file_id, "metadata")
    assert (metadata.filepath, metadata.size, metadata.sha256) == (None, 0, "")
    assert metadata.content_type == "application/json"
    assert (metadata.file_id, metadata.composite_id) == (command.file_id, None)


async def test_spans_name_the_job_file_and_step(
    processor: Processor, bands: dict[str, Path]
) -> None:
    command = _command(processor.put(bands["B04"], f"{USER}/{JOB}/B04.tif"), steps=("metadata",))

    await process_file(command, processor.deps)

    spans = {span.name: span for span in processor.spans.get_finished_spans()}
    assert set(spans) == {"process.file", "process.metadata"}
    step = spans["process.metadata"]
    assert step.attributes is not None
    assert step.attributes["downlink.job_id"] == JOB
    assert step.attributes["downlink.file_id"] == command.file_id
    assert step.parent is not None
    assert step.parent.span_id == spans["process.file"].context.span_id


async def test_a_redelivered_command_rewrites_the_same_artifacts(
    processor: Processor, bands: dict[str, Path]
) -> None:
    command = _command(processor.put(bands["B04"], f"{USER}/{JOB}/B04.tif"))

    await process_file(command, processor.deps)
    first = {(a.artifact_id, a.filepath, a.sha256) for a in processor.publisher.of(ArtifactCreated)}
    processor.publisher.events.clear()
    await process_file(command, processor.deps)
    second = {
        (a.artifact_id, a.filepath, a.sha256) for a in processor.publisher.of(ArtifactCreated)
    }

    assert first == second


async def test_a_corrupt_file_fails_each_step_with_a_clear_error(
    processor: Processor, tmp_path: Path
) -> None:
    broken = tmp_path / "B04.tif"
    broken.write_bytes(b"II*\x00" + b"\xff" * 300)
    command = _command(processor.put(broken, f"{USER}/{JOB}/B04.tif"))

    finished = await process_file(command, processor.deps)

    assert set(finished.errors) == {"metadata", "thumbnail", "cog"}
    for message in finished.errors.values():
        assert "not a readable raster" in message
        assert "B04.tif" in message
        assert str(tmp_path) not in message  # no local paths leak into results
    assert processor.publisher.of(ArtifactCreated) == []


async def test_a_text_file_gets_metadata_but_no_thumbnail_or_cog(
    processor: Processor, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not imagery\n")
    command = _command(processor.put(notes, f"{USER}/{JOB}/notes.txt"))

    finished = await process_file(command, processor.deps)

    assert set(finished.errors) == {"thumbnail", "cog"}
    assert "not a raster or image (detected text/plain)" in finished.errors["thumbnail"]
    (metadata,) = processor.publisher.of(ArtifactCreated)
    assert metadata.metadata == {
        "type": "other",
        "format": "text",
        "content_type": "text/plain",
        "size": 12,
    }


async def test_a_file_gone_from_storage_fails_every_step(processor: Processor) -> None:
    finished = await process_file(_command(f"{USER}/{JOB}/gone.tif"), processor.deps)

    assert finished.errors == {
        step: f"{USER}/{JOB}/gone.tif is no longer in storage"
        for step in ("metadata", "thumbnail", "cog")
    }


async def test_a_cancelled_job_is_skipped(processor: Processor, bands: dict[str, Path]) -> None:
    processor.cancelled.jobs.add(JOB)
    command = _command(processor.put(bands["B04"], f"{USER}/{JOB}/B04.tif"))

    with pytest.raises(JobCancelled):
        await process_file(command, processor.deps)
    assert processor.publisher.events == []


async def test_storage_without_local_paths_is_staged_through_scratch(
    processor: Processor, bands: dict[str, Path], tmp_path: Path
) -> None:
    class RemoteLike(LocalStorage):
        def local_path(self, key: str) -> None:  # type: ignore[override]
            return None

    remote = RemoteLike(processor.storage.root)
    staging = Staging.create(remote, tmp_path)
    deps = ProcessDeps(
        staging=staging,
        publisher=processor.publisher,
        runner=processor.deps.runner,
        cancellations=processor.cancelled,
    )
    command = _command(processor.put(bands["B04"], f"{USER}/{JOB}/B04.tif"), steps=("cog",))
    try:
        finished = await process_file(command, deps)
        assert list(staging.scratch_root.iterdir()) == []
    finally:
        staging.close()

    assert finished.errors == {}
    (cog,) = processor.publisher.of(ArtifactCreated)
    assert cog_validate(str(processor.storage.root / cog.filepath), quiet=True)[0]


# --- composites -------------------------------------------------------------------------------


def _composite(
    processor: Processor, bands: dict[str, Path], kind: str, roles: dict[str, str], **extra: object
) -> BuildComposite:
    return BuildComposite(
        job_id=JOB,
        composite_id="7d7f7c1e-0000-4000-8000-000000000001",
        user_id=USER,
        kind=kind,  # type: ignore[arg-type]
        bands={
            role: processor.put(bands[name], f"{USER}/{JOB}/{name}.tif")
            for role, name in roles.items()
        },
        **extra,  # type: ignore[arg-type]
    )


async def test_ndvi_composite_is_stored_and_announced(
    processor: Processor, bands: dict[str, Path]
) -> None:
    command = _composite(processor, bands, "ndvi", {"red": "B04", "nir": "B08"})

    finished = await build_composite(command, processor.deps)

    assert finished.error is None
    (ndvi,) = processor.publisher.of(ArtifactCreated)
    assert ndvi.kind == "ndvi"
    assert ndvi.composite_id == command.composite_id
    assert ndvi.file_id is None
    assert ndvi.filepath == f"{USER}/artifacts/{JOB}/composites/{command.composite_id}/ndvi.tif"
    with rasterio.open(processor.storage.root / ndvi.filepath) as dataset:
        assert dataset.dtypes == ("float32",)
    assert processor.publisher.events[-1] == finished


async def test_rgb_composite_has_a_cog_and_a_preview(
    processor: Processor, bands: dict[str, Path]
) -> None:
    command = _composite(processor, bands, "rgb", {"red": "B04", "green": "B03", "blue": "B02"})

    finished = await build_composite(command, processor.deps)

    assert finished.error is None
    kinds = {a.kind: a for a in processor.publisher.of(ArtifactCreated)}
    assert set(kinds) == {"rgb", "rgb_preview"}
    assert kinds["rgb_preview"].content_type == "image/png"
    assert kinds["rgb_preview"].metadata == {"width": 512, "height": 512, "mode": "RGB"}


_COMPOSITE_OUTPUTS = {
    "ndvi": ({"red": "B04", "nir": "B08"}, [("ndvi", "ndvi.tif", tasks.COG_CONTENT_TYPE)]),
    "rgb": (
        {"red": "B04", "green": "B03", "blue": "B02"},
        [
            ("rgb", "rgb.tif", tasks.COG_CONTENT_TYPE),
            ("rgb_preview", "rgb_preview.png", "image/png"),
        ],
    ),
}


@pytest.mark.parametrize("kind", get_args(CompositeKind))
async def test_composite_artifacts_keep_their_ids_names_and_types(
    processor: Processor, bands: dict[str, Path], kind: str
) -> None:
    roles, expected = _COMPOSITE_OUTPUTS[kind]
    command = _composite(processor, bands, kind, roles)

    finished = await build_composite(command, processor.deps)

    prefix = f"{USER}/artifacts/{JOB}/composites/{command.composite_id}"
    artifacts = processor.publisher.of(ArtifactCreated)
    assert [(a.kind, a.filepath, a.content_type) for a in artifacts] == [
        (artifact_kind, f"{prefix}/{name}", content_type)
        for artifact_kind, name, content_type in expected
    ]
    for artifact in artifacts:
        assert artifact.artifact_id == artifact_id(command.composite_id, artifact.kind)
        assert (artifact.composite_id, artifact.file_id) == (command.composite_id, None)
        stored = processor.storage.root / artifact.filepath
        assert (artifact.size, artifact.sha256) == (stored.stat().st_size, _sha256(stored))
    assert processor.publisher.events == [*artifacts, finished]


async def test_the_rgb_cog_keeps_its_facts_and_hands_the_preview_its_own(
    processor: Processor, bands: dict[str, Path]
) -> None:
    command = _composite(processor, bands, "rgb", {"red": "B04", "green": "B03", "blue": "B02"})

    await build_composite(command, processor.deps)

    rgb, preview = processor.publisher.of(ArtifactCreated)
    assert rgb.metadata is not None
    assert "preview" not in rgb.metadata
    assert rgb.metadata["kind"] == "rgb"
    assert rgb.metadata["valid_cog"] is True
    assert set(rgb.metadata["stretch"]) == {"red", "green", "blue"}
    assert preview.metadata == {"width": 512, "height": 512, "mode": "RGB"}


async def test_a_composite_that_cannot_be_built_ends_with_its_error(
    processor: Processor, bands: dict[str, Path]
) -> None:
    command = _composite(
        processor, bands, "ndvi", {"red": "B04", "nir": "B08"}, bounds=(-70.0, -10.0, -69.0, -9.0)
    )

    finished = await build_composite(command, processor.deps)

    assert finished.error is not None
    assert "do not overlap" in finished.error
    assert processor.publisher.of(ArtifactCreated) == []
    assert processor.publisher.of(CompositeFinished) == [finished]


def test_work_that_ran_out_of_tries_still_ends() -> None:
    command = _command("u/j/B04.tif", steps=("metadata", "cog", "metadata"))

    event = failure_event(command, TaskTimeout("make_cog ran past its 10 s timeout"), 3)

    assert isinstance(event, FileProcessed)
    assert event.errors == {
        "metadata": "gave up after 3 tries: make_cog ran past its 10 s timeout",
        "cog": "gave up after 3 tries: make_cog ran past its 10 s timeout",
    }


# --- through the real pool --------------------------------------------------------------------


async def test_steps_run_in_the_process_pool(processor: Processor, bands: dict[str, Path]) -> None:
    command = _command(processor.put(bands["B04"], f"{USER}/{JOB}/B04.tif"))
    async with WorkerPool(1, initializer=tasks.init_worker) as pool:
        deps = ProcessDeps(
            staging=processor.deps.staging,
            publisher=processor.publisher,
            runner=pool,
            cancellations=processor.cancelled,
        )
        finished = await process_file(command, deps)
        composite = await build_composite(
            _composite(processor, bands, "ndvi", {"red": "B04", "nir": "B08"}), deps
        )

    assert finished.errors == {}
    assert composite.error is None
    assert [a.kind for a in processor.publisher.of(ArtifactCreated)] == [
        "metadata",
        "thumbnail",
        "cog",
        "ndvi",
    ]


def test_every_composite_kind_makes_the_artifacts_the_gateway_waits_for() -> None:
    # The gateway ends a composite once all of ARTIFACTS_OF_COMPOSITE arrived: a kind whose
    # outputs differed would never end, or end early.
    assert set(COMPOSITE_OUTPUTS) == set(ARTIFACTS_OF_COMPOSITE) == set(COMPOSITE_ROLES)
    for kind, spec in COMPOSITE_OUTPUTS.items():
        assert tuple(output.kind for output in spec.outputs) == ARTIFACTS_OF_COMPOSITE[kind]
