"""The processor and exporter until their issues land: they start, say so, and idle."""

from __future__ import annotations

import asyncio
import logging
import signal


async def idle_service(name: str) -> None:
    """Run until SIGTERM/SIGINT, logging that there is no work for `name` yet."""
    log = logging.getLogger(f"services.{name}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("%s started: no work is routed to it yet", name)
    await stop.wait()
    log.info("%s stopped", name)
