"""The image board example (examples/imageboard/tasks.py) run by a real worker."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from PIL import Image

from tests.tasks.conftest import STACK_ENV, enqueue, start_worker, wait_task

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import PipelineFactory

pytestmark = pytest.mark.integration


def test_thumbnails_are_exactly_250_by_200_and_variants_keep_the_aspect(
    pipeline_factory: PipelineFactory, tmp_path: Path
) -> None:
    stack = pipeline_factory(**STACK_ENV)
    start_worker(stack, "--tasks", "examples.imageboard.tasks", "--max-jobs", "10")
    alice = stack.client("alice")
    source = tmp_path / "upload.png"
    Image.new("RGB", (1200, 600), (30, 120, 200)).save(source)
    thumb = enqueue(
        alice, "create_thumbnail", args={"source": str(source), "target": str(tmp_path / "t.jpg")}
    )
    medium = enqueue(
        alice,
        "create_variant",
        args={"source": str(source), "target": str(tmp_path / "m.jpg"), "variant": "medium"},
    )
    done = wait_task(alice, thumb)
    assert done["status"] == "completed", done
    assert (done["result"]["width"], done["result"]["height"]) == (250, 200)
    with Image.open(tmp_path / "t.jpg") as stored:
        assert stored.size == (250, 200)
    assert wait_task(alice, medium)["result"]["height"] == 400
    missing = enqueue(
        alice, "create_thumbnail", args={"source": str(tmp_path / "gone.png"), "target": "x"}
    )
    # A Permanent error: failed at once, no dead letter (running it again fails the same).
    failed = wait_task(alice, missing)
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    bad_variant = alice.post(
        "/api/v1/tasks",
        json={"task": "create_variant", "args": {"source": "a", "target": "b", "variant": "xl"}},
    )
    assert bad_variant.status_code == 422
    assert bad_variant.json()["detail"].startswith("args.variant:")
