"""The annotation pipeline (examples/annotation) against a rate-limited API stand-in."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest

from tests.examples.conftest import wait_progress
from tests.support.fake_apis import LIMIT, annotations_of, pages_of
from tests.tasks.conftest import enqueue, start_worker, wait_task

if TYPE_CHECKING:
    from tests.integration.conftest import Pipeline
    from tests.support.fake_apis import AnnotationApi
    from tests.support.services import ServiceProcess

pytestmark = pytest.mark.integration


def _worker(stack: Pipeline, *args: str) -> ServiceProcess:
    return start_worker(
        stack, "--tasks", "examples.annotation.tasks", "--queue", "annotation", *args
    )


def _expected(genes: list[str]) -> dict[str, object]:
    return {"genes": len(genes), "annotations": {gene: annotations_of(gene) for gene in genes}}


def test_two_workers_share_the_apis_three_requests_a_second(
    stack: Pipeline, annotation_api: AnnotationApi
) -> None:
    # The stand-in does refuse a client that does not pace itself.
    with httpx.Client(base_url=annotation_api.url, trust_env=False) as raw:
        burst = [raw.get("/genes/BRCA1/annotations").status_code for _ in range(LIMIT + 1)]
    assert burst[-1] == 429
    annotation_api.reset()
    _worker(stack, "--max-jobs", "2")
    _worker(stack, "--max-jobs", "2")
    alice = stack.client("alice")
    batches = [[f"GENE{b}-{g}" for g in range(4)] for b in range(4)]
    task_ids = [
        enqueue(alice, "annotate_genes", args={"genes": genes, "api_url": annotation_api.url})
        for genes in batches
    ]
    done = [wait_task(alice, task_id, timeout=90) for task_id in task_ids]
    assert [d["status"] for d in done] == ["completed"] * 4, done
    assert [d["result"] for d in done] == [_expected(genes) for genes in batches]
    assert len({d["worker"] for d in done}) == 2  # both workers ran some at the same time
    assert annotation_api.throttled() == 0
    # Every page asked for once: no request was wasted on a refusal and a retry.
    assert len(annotation_api.requests) == sum(pages_of(g) for genes in batches for g in genes)


def test_a_killed_worker_and_a_restarted_gateway_resume_from_the_checkpoint(
    stack: Pipeline, annotation_api: AnnotationApi
) -> None:
    doomed = _worker(stack)
    alice = stack.client("alice")
    genes = [f"TP{n}" for n in range(10)]
    task_id = enqueue(
        alice, "annotate_genes_long", args={"genes": genes, "api_url": annotation_api.url}
    )
    seen = wait_progress(alice, task_id, 4)
    doomed.kill()
    checkpointed = genes[: int(seen["progress"]["done"])]
    assert stack.gateway is not None
    stack.gateway.kill()
    _worker(stack)
    stack.start_gateway()
    done = wait_task(alice, task_id, timeout=90)
    assert (done["status"], done["attempts"]) == ("completed", 2), done
    assert done["result"] == _expected(genes)
    served = annotation_api.served()
    assert all(
        served[(gene, page)] == 1 for gene in checkpointed for page in range(1, pages_of(gene) + 1)
    ), served
    # Only the gene the killed try was on when it died is asked for again.
    again = {gene for (gene, _), count in served.items() if count > 1}
    assert len(again) <= 1
    assert not again & set(checkpointed)
    assert annotation_api.throttled() == 0
