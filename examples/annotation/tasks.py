"""A genetics annotation pipeline on Downlink (it ran on arq with 2 h and 6 h job timeouts).

Each gene's annotations come page by page from an HTTP API that allows 3 requests a second to
everyone: every request waits its turn in `ctx.rate_limit`, which counts over all workers. After
each gene the annotations so far are checkpointed, so a try cut short (a SIGKILLed worker, a
5xx from the API) resumes at the gene it was on instead of paying the API for the rest again.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp

from downlink import Context, Permanent, task

# The API's limit (NCBI E-utilities: 3 requests/s per client, and all workers are one client).
RATE_KEY = "annotation-api"
REQUESTS_PER_S = 3
# A 429 despite the limiter means someone else spends the same quota: wait and ask again.
MAX_THROTTLED = 10
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60)

Annotations = dict[str, list[dict[str, Any]]]


@task(name="annotate_genes", queue="annotation", timeout_s=2 * 3600, retry_backoff_s=30)
async def annotate_genes(genes: list[str], api_url: str, ctx: Context) -> dict[str, Any]:
    """The annotations of each gene, by gene; for lists that take up to 2 hours."""
    return await _annotate(genes, api_url, ctx)


@task(name="annotate_genes_long", queue="annotation", timeout_s=6 * 3600, retry_backoff_s=30)
async def annotate_genes_long(genes: list[str], api_url: str, ctx: Context) -> dict[str, Any]:
    """`annotate_genes` for the lists that take up to 6 hours."""
    return await _annotate(genes, api_url, ctx)


async def _annotate(genes: list[str], api_url: str, ctx: Context) -> dict[str, Any]:
    done: Annotations = dict(ctx.checkpointed or {})
    if done:
        ctx.logger.info("resuming after %d of %d genes", len(done), len(genes))
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
        for index, gene in enumerate(genes, start=1):
            if gene not in done:
                done[gene] = await _gene(session, api_url, gene, ctx)
                await ctx.checkpoint(done)
            ctx.progress(index, len(genes), gene)
    return {"genes": len(genes), "annotations": {gene: done[gene] for gene in genes}}


async def _gene(
    session: aiohttp.ClientSession, api_url: str, gene: str, ctx: Context
) -> list[dict[str, Any]]:
    """All pages of one gene's annotations."""
    url = f"{api_url.rstrip('/')}/genes/{quote(gene, safe='')}/annotations"
    items: list[dict[str, Any]] = []
    page: int | None = 1
    while page is not None:
        body = await _page(session, url, page, ctx)
        items.extend(body["items"])
        page = body["next_page"]
    return items


async def _page(
    session: aiohttp.ClientSession, url: str, page: int, ctx: Context
) -> dict[str, Any]:
    for _ in range(MAX_THROTTLED):
        await ctx.rate_limit(RATE_KEY, REQUESTS_PER_S, 1.0)
        async with session.get(url, params={"page": str(page)}) as response:
            if response.status == 429:
                ctx.logger.warning("throttled by the API on %s page %d", url, page)
                await asyncio.sleep(_retry_after_s(response.headers.get("Retry-After")))
                continue
            if response.status == 404:
                raise Permanent(f"the API knows no {url}")
            # Any other error fails this try; the next one resumes from the checkpoint.
            response.raise_for_status()
            body: dict[str, Any] = await response.json()
            return body
    raise RuntimeError(f"{url} page {page}: still throttled after {MAX_THROTTLED} requests")


def _retry_after_s(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 1.0
    except ValueError:  # an HTTP date: not worth parsing for a wait this short
        return 1.0
