"""Exporter wiring; archives arrive with their own issue."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.workers import idle_service

if TYPE_CHECKING:
    from shared.settings import Settings


async def serve(settings: Settings) -> None:
    del settings
    await idle_service("exporter")
