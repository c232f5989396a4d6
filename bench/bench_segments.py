"""Segmented vs single-connection downloads from a server that caps each connection.

The downloader's own fetch (`fetch_into` with the Redis host budget) pulls one file from a local
file server that throttles every connection to `--rate-mib` MiB/s (Copernicus allows 4
connections at 20 MB/s each), once over one connection and once in `--segments` ranges; the
SHA-256 is checked both times. Prints one JSON object. Needs redis-server on PATH (a throwaway
one is started) and sends traffic to 127.0.0.1 only.

    .venv/bin/python bench/bench_segments.py [--size-mib 1024] [--rate-mib 20] [--segments 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.downloader.budget import HostBudget
from services.downloader.fetch import FetchLimits, fetch_into
from services.downloader.limits import AddressGuard, guarded_connector
from shared.storage.local import LocalStorage
from tests.support.file_server import FileServer
from tests.support.redis_server import throwaway_redis

MIB = 1024 * 1024


async def _fetch(url: str, root: Path, redis_url: str, segments: int, threshold: int) -> float:
    guard = AddressGuard(allow_private=True)
    storage = LocalStorage(root)
    limits = FetchLimits(
        max_size_bytes=1 << 40,
        max_redirects=3,
        progress_interval_s=1.0,
        segment_threshold_bytes=threshold,
        segments=segments,
    )

    async def ignore(_done: int, _total: int | None, _rate: float) -> None:
        return None

    redis = Redis.from_url(redis_url)
    async with (
        HostBudget(redis, max(segments, 1)) as budget,
        aiohttp.ClientSession(connector=guarded_connector(guard), auto_decompress=False) as s,
    ):
        part = await storage.open_part(f"bench-{segments}", resume=False)
        began = time.perf_counter()
        fetched = await fetch_into(
            s, url, part, guard=guard, limits=limits, on_progress=ignore, slots=budget
        )
        await part.commit(f"bench/{segments}.bin")
        elapsed = time.perf_counter() - began
    await redis.aclose()
    (root / "bench" / f"{segments}.bin").unlink()
    return fetched.size / elapsed / MIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rate-mib", type=float, default=20.0)
    parser.add_argument("--segments", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-segments-") as tmp:
        work = Path(tmp)
        with (
            throwaway_redis(work / "redis") as redis_url,
            FileServer(work / "served", rate_per_connection=args.rate_mib * MIB) as server,
        ):
            url, _sha = server.add_file("big.bin", size=args.size_mib * MIB)
            threshold = min(64 * MIB, args.size_mib * MIB)
            one = asyncio.run(_fetch(url, work / "store", redis_url, 1, threshold))
            many = asyncio.run(_fetch(url, work / "store", redis_url, args.segments, threshold))
    print(
        json.dumps(
            {
                "size_mib": args.size_mib,
                "rate_per_connection_mib_s": args.rate_mib,
                "one_connection_mib_s": round(one, 1),
                f"{args.segments}_segments_mib_s": round(many, 1),
                "speedup": round(many / one, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
