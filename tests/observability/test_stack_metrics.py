"""`downlink stack` gives each worker its own metrics port from the one DOWNLINK_METRICS_PORT."""

from __future__ import annotations

from services.stack import _metrics_env
from shared.settings import Settings


def test_each_worker_gets_the_next_port_and_the_gateway_none() -> None:
    settings = Settings.from_env({"DOWNLINK_METRICS_PORT": "9100"})
    ports = {
        name: _metrics_env(name, settings)
        for name in ("gateway", "downloader", "processor", "exporter")
    }
    assert ports == {
        "gateway": {},  # it serves /metrics on its HTTP port
        "downloader": {"DOWNLINK_METRICS_PORT": "9100"},
        "processor": {"DOWNLINK_METRICS_PORT": "9101"},
        "exporter": {"DOWNLINK_METRICS_PORT": "9102"},
    }


def test_no_metrics_port_changes_nothing() -> None:
    assert _metrics_env("downloader", Settings.from_env({})) == {}
