"""The Server-Sent Events reader: what the gateway's job streams send, line by line."""

from __future__ import annotations

from downlink.client.sse import EventParser, ServerEvent


def events(text: str) -> list[ServerEvent]:
    parser = EventParser()
    fed = (parser.feed(line) for line in text.split("\n"))
    return [event for event in fed if event is not None]


def test_events_with_ids_types_and_data() -> None:
    stream = (
        ": events of job 1\nretry: 2000\n\n"
        'id: 7\nevent: file.downloaded\ndata: {"size": 3}\n\n'
        ": keep-alive\n\n"
        'id: 8\nevent: job.finished\ndata: {"status":\ndata:  "completed"}\n\n'
    )
    assert events(stream) == [
        ServerEvent(id=7, type="file.downloaded", data='{"size": 3}'),
        ServerEvent(id=8, type="job.finished", data='{"status":\n "completed"}'),
    ]


def test_an_event_without_an_id_keeps_the_last_and_without_a_type_is_a_message() -> None:
    assert events("id: 3\ndata: a\n\ndata: b\n\nevent: x\n\n") == [
        ServerEvent(id=3, type="message", data="a"),
        ServerEvent(id=3, type="message", data="b"),
    ]
