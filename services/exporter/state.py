"""Redis-backed ports of the exporter: built archives and cancelled exports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.events import ExportReady
from shared.streams import EXPORT_CANCEL_CHANNEL, export_cancelled_key, export_done_key

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)


class RedisExportCompletions:
    """ExportReady events of built archives, kept for the retention period."""

    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._decoder = msgspec.json.Decoder(ExportReady)

    async def get(self, export_id: str) -> ExportReady | None:
        raw = await self._redis.get(export_done_key(export_id))
        if not raw:
            return None
        try:
            return self._decoder.decode(raw)
        except msgspec.DecodeError:
            return None  # unreadable: build again rather than trust it

    async def put(self, event: ExportReady) -> None:
        await self._redis.set(
            export_done_key(event.export_id), msgspec.json.encode(event), ex=self._ttl_s
        )


class ExportCancelWatcher:
    """Sets the abort flag of a build within moments of its export's cancel being published.

    The flag is a `threading.Event` because the archive writer checks it from its thread.
    """

    _REMEMBERED = 10_000

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._flags: defaultdict[str, set[threading.Event]] = defaultdict(set)
        self._cancelled: OrderedDict[str, None] = OrderedDict()

    async def is_cancelled(self, export_id: str) -> bool:
        if export_id in self._cancelled:
            return True
        return bool(await self._redis.exists(export_cancelled_key(export_id)))

    @contextlib.asynccontextmanager
    async def watch(self, export_id: str) -> AsyncIterator[threading.Event]:
        flag = threading.Event()
        if export_id in self._cancelled:
            flag.set()
        self._flags[export_id].add(flag)
        try:
            yield flag
        finally:
            self._flags[export_id].discard(flag)
            if not self._flags[export_id]:
                del self._flags[export_id]

    def cancel(self, export_id: str) -> None:
        self._cancelled[export_id] = None
        while len(self._cancelled) > self._REMEMBERED:
            self._cancelled.popitem(last=False)
        for flag in self._flags.get(export_id, ()):
            flag.set()

    async def listen(self) -> None:
        """Follow the export cancel channel until cancelled; reconnects after an outage."""
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(EXPORT_CANCEL_CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            export_id = message["data"].decode()
                            log.info(
                                "export %s cancelled: aborting its build",
                                export_id,
                                extra={"export_id": export_id},
                            )
                            self.cancel(export_id)
            except (RedisConnectionError, OSError) as exc:
                log.warning("export cancel channel lost (%s); resubscribing", exc)
                await asyncio.sleep(1)
