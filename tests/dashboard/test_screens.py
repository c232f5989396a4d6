"""The pieces of the screens that need no stack: the jobs list's filters and the charts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.gateway.dashboard.chart import HEIGHT, WIDTH, sparkline
from services.gateway.dashboard.filters import JobFilter, parse_job_filter
from services.gateway.dashboard.units import human_bytes, human_rate, moment
from services.gateway.errors import InvalidRequest


def test_filters_read_every_field_and_round_trip_to_the_query_string() -> None:
    params = {
        "status": "in_progress",
        "priority": "7",
        "since": "2026-03-01T08:30",
        "until": "2026-03-02T00:00+00:00",
        "text": " S2B ",
        "user": "bob",
    }
    wanted = parse_job_filter(params, admin=True)

    assert wanted == JobFilter(
        status="in_progress",
        priority=7,
        since=datetime(2026, 3, 1, 8, 30, tzinfo=UTC),
        until=datetime(2026, 3, 2, tzinfo=UTC),
        text="S2B",
        user="bob",
    )
    assert parse_job_filter(wanted.query(), admin=True) == wanted
    assert parse_job_filter({"status": "", "text": "  "}, admin=False) == JobFilter()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "done"}, "status"),
        ({"priority": "0"}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"text": "x" * 201}, "text"),
        ({"user": "bob"}, "user"),
    ],
)
def test_a_bad_filter_is_a_400_naming_its_field(params: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidRequest, match=f"^{field}: "):
        parse_job_filter(params, admin=False)


def test_a_sparkline_spans_the_box_with_its_peak_at_the_top() -> None:
    line = sparkline([0.0, 2.0, 1.0])

    assert line.points == f"0.0,{HEIGHT - 1:.1f} {WIDTH / 2:.1f},1.0 {WIDTH:.1f},{HEIGHT / 2:.1f}"
    assert (line.peak, line.latest) == (2.0, 1.0)
    flat = sparkline([0.0] * 60)
    assert {point.split(",")[1] for point in flat.points.split()} == {f"{HEIGHT - 1:.1f}"}


def test_numbers_are_written_for_people() -> None:
    assert [human_bytes(v) for v in (0, 999, 1500, 8_388_608, None)] == [
        "0 B",
        "999 B",
        "1.5 KB",
        "8.4 MB",
        "?",
    ]
    assert (human_rate(2_500_000), human_rate(None)) == ("2.5 MB/s", "")
    assert moment(0.0) == moment(datetime(1970, 1, 1, tzinfo=UTC)) == "1970-01-01 00:00:00"
