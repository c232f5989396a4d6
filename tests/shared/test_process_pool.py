"""The process pool: results and errors cross back, a stuck task's worker is killed and replaced."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from services.processor import tasks
from services.processor.rasters import ProcessingError
from shared.process_pool import TaskTimeout, WorkerCrashed, WorkerPool

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    async with WorkerPool(2, initializer=tasks.init_worker) as started:
        yield started


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of ours may linger as a zombie until reaped; that is not alive.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


async def _gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_tasks_run_in_other_processes(pool: WorkerPool) -> None:
    pids = await asyncio.gather(*(pool.run(5, os.getpid) for _ in range(4)))

    assert set(pids) <= set(pool.pids)
    assert os.getpid() not in pids
    assert len(pool.pids) == 2


async def test_errors_of_a_task_come_back_as_they_are(pool: WorkerPool, tmp_path: Path) -> None:
    path = tmp_path / "junk.tif"
    path.write_bytes(b"II*\x00 not really")

    with pytest.raises(ProcessingError, match="not a readable raster"):
        await pool.run(5, tasks.extract_metadata, str(path))
    assert await pool.run(5, divmod, 7, 2) == (3, 1)  # the worker lives on


async def test_a_task_past_its_timeout_has_its_worker_killed_and_replaced(
    pool: WorkerPool,
) -> None:
    before = list(pool.pids)

    started = time.monotonic()
    with pytest.raises(TaskTimeout, match=r"past its 0\.5 s timeout"):
        await pool.run(0.5, time.sleep, 30)

    assert time.monotonic() - started < 5
    assert pool.restarts == 1
    killed = (set(before) - set(pool.pids)).pop()
    assert await _gone(killed)
    assert len(pool.pids) == 2
    # The other worker was untouched and the pool still works at full size.
    assert len(set(before) & set(pool.pids)) == 1
    results = await asyncio.gather(*(pool.run(5, pow, 2, n) for n in range(4)))
    assert results == [1, 2, 4, 8]


async def test_a_worker_that_dies_under_a_task_is_replaced(pool: WorkerPool) -> None:
    with pytest.raises(WorkerCrashed):
        await pool.run(5, os._exit, 3)

    assert await pool.run(5, abs, -4) == 4
    assert len(pool.pids) == 2


async def test_a_long_task_does_not_block_the_event_loop(pool: WorkerPool) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    await pool.run(5, time.sleep, 0.5)
    ticker.cancel()

    assert ticks > 20


async def test_workers_ignore_sigterm_and_stop_with_the_pool() -> None:
    async with WorkerPool(1, initializer=tasks.init_worker) as pool:
        (pid,) = pool.pids
        os.kill(pid, signal.SIGTERM)  # a TERM sent to the whole process group
        assert await pool.run(5, abs, -1) == 1
        assert pool.pids == [pid]
    assert await _gone(pid)


def test_workers_exit_when_the_service_is_sigkilled(tmp_path: Path) -> None:
    script = tmp_path / "service.py"
    script.write_text(
        "import asyncio, sys, time\n"
        "from services.processor import tasks\n"
        "from shared.process_pool import WorkerPool\n"
        "async def main():\n"
        "    async with WorkerPool(1, initializer=tasks.init_worker) as pool:\n"
        "        print(pool.pids[0], flush=True)\n"
        "        await pool.run(60, time.sleep, 60)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n"
    )
    service = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert service.stdout is not None
        worker = int(service.stdout.readline())
        service.kill()
        service.wait(timeout=10)
        deadline = time.monotonic() + 5
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(worker), "an orphaned worker outlived its service"
    finally:
        service.kill()
        service.wait(timeout=10)
        if service.stdout is not None:
            service.stdout.close()
