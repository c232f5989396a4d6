"""Browser tests of the dashboard: a real stack (tests/integration) and Debian's Chromium."""

from __future__ import annotations

from tests.integration.conftest import pipeline, pipeline_factory
from tests.support.browser import browser, page

__all__ = ["browser", "page", "pipeline", "pipeline_factory"]
