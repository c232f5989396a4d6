"""Stream names and the priority lanes."""

from __future__ import annotations

import os
import socket

import pytest

from shared.ids import JobId
from shared.streams import (
    DEAD_STREAM,
    DOWNLOAD_LANES,
    DOWNLOADER_GROUP,
    EVENTS_STREAM,
    GROUPS,
    Lane,
    cancelled_key,
    consumer_name,
    download_stream,
    lane_for,
)


@pytest.mark.parametrize(
    ("priority", "lane"),
    [
        (1, Lane.LOW),
        (2, Lane.LOW),
        (3, Lane.LOW),
        (4, Lane.NORMAL),
        (5, Lane.NORMAL),
        (6, Lane.NORMAL),
        (7, Lane.NORMAL),
        (8, Lane.HIGH),
        (9, Lane.HIGH),
        (10, Lane.HIGH),
    ],
)
def test_lane_for_each_priority(priority: int, lane: Lane) -> None:
    assert lane_for(priority) is lane


@pytest.mark.parametrize("priority", [0, 11, -1])
def test_priorities_outside_1_to_10_are_refused(priority: int) -> None:
    with pytest.raises(ValueError, match="1-10"):
        lane_for(priority)


def test_download_lanes_are_high_normal_low() -> None:
    assert DOWNLOAD_LANES == (
        "downlink:downloads:high",
        "downlink:downloads:normal",
        "downlink:downloads:low",
    )
    assert download_stream(lane_for(10)) == DOWNLOAD_LANES[0]


def test_stream_names_are_the_designs() -> None:
    assert EVENTS_STREAM == "downlink:events"
    assert DEAD_STREAM == "downlink:dead"
    assert GROUPS[DOWNLOADER_GROUP] == DOWNLOAD_LANES
    assert cancelled_key(JobId("j-1")) == "downlink:cancelled:j-1"


def test_consumer_name_is_host_and_pid() -> None:
    assert consumer_name() == f"{socket.gethostname()}-{os.getpid()}"
