"""Enqueue a task from Python and wait for its result (docs/client.md).

Run a worker of the image board's tasks, then this with the gateway's URL and your token:

    downlink worker --tasks examples.imageboard.tasks
    export DOWNLINK_URL=http://127.0.0.1:8000 DOWNLINK_TOKEN=dl_...
    python examples/client_quickstart.py photo.png thumb.jpg
"""

from __future__ import annotations

import asyncio
import sys

import downlink


async def main(source: str, target: str) -> int:
    async with downlink.Client() as dl:  # DOWNLINK_URL and DOWNLINK_TOKEN
        try:
            thumbnail = await dl.enqueue("create_thumbnail", source=source, target=target)
        except downlink.Invalid as exc:  # 422: the message names the argument
            print(f"refused: {exc.message}")
            return 2
        print(f"queued {thumbnail.task_id} at position {thumbnail.queue_position}")
        try:
            made = await thumbnail.result(timeout=60)
        except downlink.TaskFailedError as exc:
            print(f"failed: {exc.error}")  # exc.traceback holds the worker's traceback
            return 1
        print(f"made {made['path']}: {made['width']}x{made['height']}")
        return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
