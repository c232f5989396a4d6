"""The clients of the `pollers` scenario, in a process of their own (their CPU is not the driver's).

    BENCH_TOKEN=… bench/.venvs/peers/bin/python bench/pipeline/hammer.py BASE_URL CLIENTS [PAUSE_S]

Each client keeps one keep-alive connection and GETs the job's status again as soon as the last
answer is read (or PAUSE_S later: a paced poller). Prints `ready` once every connection is open,
reads the job id from stdin, polls until the next stdin line, then prints one JSON line: each
answer as [sent, arrived, completed] (time.monotonic(), which is system-wide, so the driver can
set it against its own samples; completed = -1 for an answer that was not a 200) and this
process's CPU seconds while polling.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import aiohttp

Answer = tuple[float, float, int]


async def _poll(
    session: aiohttp.ClientSession,
    path: str,
    pause_s: float,
    stop: asyncio.Event,
    out: list[Answer],
) -> None:
    while not stop.is_set():
        sent = time.monotonic()
        async with session.get(path) as response:
            body = await response.read()
        arrived = time.monotonic()
        completed = json.loads(body)["progress"]["completed"] if response.status == 200 else -1
        out.append((sent, arrived, completed))
        if pause_s:
            await asyncio.sleep(pause_s)


async def _main(base_url: str, token: str, clients: int, pause_s: float) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {token}"}
    sessions = [
        aiohttp.ClientSession(
            base_url, headers=headers, connector=aiohttp.TCPConnector(limit=1), trust_env=False
        )
        for _ in range(clients)
    ]
    try:
        for session in sessions:  # one connection each, opened before any clock runs
            async with session.get("/ready") as response:
                await response.read()
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        job = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        cpu_started, stop, answers = time.process_time(), asyncio.Event(), list[Answer]()
        path = f"/api/v1/downloads/jobs/{job}"
        async with asyncio.TaskGroup() as group:
            for session in sessions:
                group.create_task(_poll(session, path, pause_s, stop, answers))
            await loop.run_in_executor(None, sys.stdin.readline)
            stop.set()
        return {"answers": answers, "cpu_s": time.process_time() - cpu_started}
    finally:
        for session in sessions:
            await session.close()


if __name__ == "__main__":
    pause_s = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    result = asyncio.run(_main(sys.argv[1], os.environ["BENCH_TOKEN"], int(sys.argv[2]), pause_s))
    print(json.dumps(result), flush=True)
