"""Consumer overhead: shared.consumer.StreamConsumer against a bare redis-py XREADGROUP/XACK loop.

Both drain the same number of FastStream-framed entries from one stream with a handler that does
nothing, so the figure is the machinery's own cost per message (priority reads, ack, spans).
Prints one JSON object. Uses DOWNLINK_BENCH_REDIS_URL (default redis://127.0.0.1:6379/15).

    .venv/bin/python bench/bench_consumer.py [--messages 5000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.broker import create_broker
from shared.consumer import ConsumerPolicy, Delivery, StreamConsumer, ensure_groups
from shared.streams import DOWNLOAD_LANES

STREAM = DOWNLOAD_LANES[1]


async def _fill(redis_url: str, redis: Redis, count: int) -> None:
    await redis.flushdb()
    broker = create_broker(redis_url)
    await broker.connect()
    try:
        for start in range(0, count, 500):
            async with redis.pipeline(transaction=False) as pipe:
                for index in range(start, min(count, start + 500)):
                    await broker.publish({"n": index}, stream=STREAM, pipeline=pipe)
                await pipe.execute()
    finally:
        await broker.stop()
    await ensure_groups(redis, {"bench": DOWNLOAD_LANES})


async def _downlink(redis: Redis, count: int, concurrency: int) -> float:
    done = asyncio.Event()
    seen = 0

    async def handle(_delivery: Delivery) -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            done.set()

    consumer = StreamConsumer(
        redis=redis,
        streams=DOWNLOAD_LANES,
        group="bench",
        consumer="bench-1",
        handler=handle,
        policy=ConsumerPolicy(concurrency=concurrency),
    )
    started = time.perf_counter()
    runner = asyncio.create_task(consumer.run())
    await done.wait()
    elapsed = time.perf_counter() - started
    consumer.stop()
    await runner
    return elapsed


async def _raw(redis: Redis, count: int) -> float:
    started = time.perf_counter()
    seen = 0
    while seen < count:
        response = await redis.xreadgroup("bench", "raw-1", {STREAM: ">"}, count=100, block=1000)
        for _stream, entries in response:
            ids = [entry_id for entry_id, _fields in entries]
            seen += len(ids)
            await redis.xack(STREAM, "bench", *ids)
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    redis_url = os.environ.get("DOWNLINK_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
    async with Redis.from_url(redis_url) as redis:
        await _fill(redis_url, redis, args.messages)
        downlink_s = await _downlink(redis, args.messages, args.concurrency)
        await _fill(redis_url, redis, args.messages)
        raw_s = await _raw(redis, args.messages)
        await redis.flushdb()
    print(
        json.dumps(
            {
                "benchmark": "consumer",
                "messages": args.messages,
                "concurrency": args.concurrency,
                "downlink_msgs_per_s": round(args.messages / downlink_s),
                "raw_redis_py_msgs_per_s": round(args.messages / raw_s),
                "overhead_ratio": round(downlink_s / raw_s, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
