"""The address guard against hosts that IDNA/NFKC normalisation turns into IP literals.

Every target is a real server on loopback that records each connection it accepts: with the
guard on, none of them may see a single connection, whether the disguised host is the first URL
or the Location of a redirect from an allowed host. The last section tests the connector's own
check of each peer address, with the URL and resolver checks out of the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
import pytest
import yarl

from services.downloader.handlers import download_file
from services.downloader.limits import AddressGuard, guarded_connector, guarded_socket_factory
from shared.errors import BlockedAddress, PermanentError
from tests.downloader.conftest import StaticResolver, command

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from _pytest.mark.structures import ParameterSet

    from tests.downloader.conftest import MakeDownloader
    from tests.support.file_server import FileServer


def _digits(zero: int) -> str:
    return "".join(chr(zero + d) for d in range(10))


# Written as code points: ruff (rightly) flags these look-alikes when they appear literally.
ASCII_DIGITS = _digits(ord("0"))
FULLWIDTH = _digits(0xFF10)
CIRCLED = "\u24ea" + "".join(chr(0x2460 + d) for d in range(9))
MATH_BOLD = _digits(0x1D7CE)
SUPERSCRIPT = "\u2070\u00b9\u00b2\u00b3" + "".join(chr(0x2074 + d) for d in range(6))
SUBSCRIPT = _digits(0x2080)

# (digits, dot): each folds into the ASCII dotted quad under yarl's IDNA/NFKC handling.
STYLES = {
    "ideographic-full-stop": (ASCII_DIGITS, "\u3002"),
    "fullwidth-full-stop": (ASCII_DIGITS, "\uff0e"),
    "halfwidth-ideographic-full-stop": (ASCII_DIGITS, "\uff61"),
    "one-dot-leader": (ASCII_DIGITS, "\u2024"),
    "fullwidth-digits-and-stops": (FULLWIDTH, "\uff0e"),
    "fullwidth-digits-ascii-dots": (FULLWIDTH, "."),
    "circled-digits": (CIRCLED, "."),
    "math-bold-digits": (MATH_BOLD, "."),
    "superscript-digits": (SUPERSCRIPT, "\u3002"),
    "subscript-digits": (SUBSCRIPT, "\uff61"),
}


def spell(address: str, style: str) -> str:
    """`address` with its digits and dots replaced by the characters of `style`."""
    digits, dot = STYLES[style]
    return "".join(digits[int(c)] if c.isdigit() else dot for c in address)


# Mixed forms: ASCII, fullwidth, circled, math bold, superscript, subscript and all three
# ideographic full stops in one host.
MIXED = {
    "127.0.0.1": "1\uff127\u3002\u24ea\uff0e0\uff61\U0001d7cf",
    "127.0.0.2": "\u00b9\uff127\uff0e0\u3002\u2080\uff61\u2461",
}


def disguises(address: str) -> list[ParameterSet]:
    """(spelling, address) for every non-ASCII spelling the HTTP client turns into `address`."""
    spellings = [pytest.param(spell(address, s), address, id=f"{address}-{s}") for s in STYLES]
    return [*spellings, pytest.param(MIXED[address], address, id=f"{address}-mixed")]


LOOPBACK_DISGUISES = disguises("127.0.0.1") + disguises("127.0.0.2")

# Spellings the client itself refuses (yarl raises, or aiohttp will not connect to a
# non-canonical IPv4 form): refused all the same, and still without a connection.
REFUSED_SPELLINGS = [
    pytest.param("127.0.0.1\u00ad", id="soft-hyphen"),
    pytest.param("12\u200d7.0.0.1", id="zero-width-joiner"),
    pytest.param(
        "\uff3b\uff1a\uff1a\uff11\uff3d",  # [::1] in fullwidth
        id="fullwidth-ipv6-brackets",
    ),
    pytest.param(spell("127.1", "fullwidth-digits-and-stops"), id="fullwidth-short-form"),
    pytest.param(spell("2130706433", "fullwidth-digits-and-stops"), id="fullwidth-integer"),
    pytest.param("127\u30020\u30020\u30021\u3002", id="trailing-ideographic-full-stop"),
]


@dataclass
class ConnectionRecorder:
    """A TCP server on one loopback address that records every connection and answers 200."""

    address: str
    port: int = 0
    peers: list[tuple[str, int]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peername"))
        with contextlib.suppress(ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecret")
            await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def recording(address: str) -> AsyncIterator[ConnectionRecorder]:
    recorder = ConnectionRecorder(address)
    server = await asyncio.start_server(recorder.handle, address, 0)
    recorder.port = server.sockets[0].getsockname()[1]
    async with server:
        yield recorder


@pytest.fixture
async def targets() -> AsyncIterator[dict[str, ConnectionRecorder]]:
    """Recording servers on 127.0.0.1 and 127.0.0.2 (all of 127.0.0.0/8 is loopback on Linux)."""
    async with recording("127.0.0.1") as first, recording("127.0.0.2") as second:
        yield {"127.0.0.1": first, "127.0.0.2": second}


def target_url(host: str, recorder: ConnectionRecorder) -> str:
    return f"http://{host}:{recorder.port}/files/a.tif"


def connections(targets: dict[str, ConnectionRecorder]) -> list[tuple[str, int]]:
    return [peer for recorder in targets.values() for peer in recorder.peers]


def session_on(connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=30), auto_decompress=False
    )


# -- the spellings, and the URL check on its own (strings only, nothing is connected to) ------


@pytest.mark.parametrize(("host", "address"), LOOPBACK_DISGUISES)
def test_each_disguise_is_what_the_client_connects_to(host: str, address: str) -> None:
    # Keeps the list honest: each one really becomes the IP literal aiohttp connects to.
    assert not host.isascii()
    assert yarl.URL(f"http://{host}:8080/x").raw_host == address


@pytest.mark.parametrize(
    ("host", "address"),
    [*LOOPBACK_DISGUISES, pytest.param("\u2469.0.0.1", "10.0.0.1", id="circled-ten-private")],
)
def test_the_url_check_refuses_a_disguise_even_of_an_allowed_address(
    host: str, address: str
) -> None:
    guard = AddressGuard(allow_private=False, allowed_networks=["127.0.0.0/8", "10.0.0.0/8"])
    with pytest.raises(BlockedAddress, match=re.escape(address)):
        guard.check_url(f"http://{host}:8080/x")


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://127.0.0.1:8080/x", "127.0.0.1"),
        ("http://[::1]/x", "::1"),
        ("http://bücher.example/x", "xn--bcher-kva.example"),
        ("http://files.example/\u2460.tif", "files.example"),
    ],
)
def test_the_url_check_returns_the_host_the_client_connects_to(url: str, host: str) -> None:
    guard = AddressGuard(allow_private=False, allowed_networks=["127.0.0.1/32", "::1/128"])
    assert guard.check_url(url).raw_host == host


# -- with the guard on and no allowed network ----------------------------------------------------


@pytest.mark.parametrize(("host", "address"), LOOPBACK_DISGUISES)
async def test_a_disguised_loopback_literal_is_refused_before_any_connection(
    make_downloader: MakeDownloader,
    targets: dict[str, ConnectionRecorder],
    host: str,
    address: str,
) -> None:
    downloader = make_downloader(allow_private=False)
    url = target_url(host, targets[address])
    with pytest.raises(BlockedAddress, match=re.escape(address)):
        await download_file(command(url), downloader.deps, attempt=1)
    assert connections(targets) == []
    assert downloader.objects() == {}


@pytest.mark.parametrize("host", REFUSED_SPELLINGS)
async def test_a_spelling_the_client_rejects_is_refused_before_any_connection(
    make_downloader: MakeDownloader, targets: dict[str, ConnectionRecorder], host: str
) -> None:
    # Were any of them ever connected to, it would be 127.0.0.1 (or ::1, which nothing serves).
    downloader = make_downloader(allow_private=False)
    url = target_url(host, targets["127.0.0.1"])
    with pytest.raises(PermanentError):
        await download_file(command(url), downloader.deps, attempt=1)
    assert connections(targets) == []


# -- a redirect from an allowed host -------------------------------------------------------------


@pytest.mark.parametrize(("host", "address"), disguises("127.0.0.2"))
async def test_a_redirect_to_a_disguised_blocked_literal_is_refused(
    make_downloader: MakeDownloader,
    file_server: FileServer,
    targets: dict[str, ConnectionRecorder],
    host: str,
    address: str,
) -> None:
    downloader = make_downloader(allow_private=False, allowed_networks=["127.0.0.1/32"])
    hop = file_server.redirect_url(target_url(host, targets[address]))
    with pytest.raises(BlockedAddress, match=re.escape(address)):
        await download_file(command(hop), downloader.deps, attempt=1)
    assert [r.path for r in file_server.requests] == ["/redirect"]
    assert connections(targets) == []


@pytest.mark.parametrize(("host", "address"), disguises("127.0.0.1"))
async def test_a_disguised_spelling_of_an_allowed_address_is_refused_too(
    make_downloader: MakeDownloader,
    targets: dict[str, ConnectionRecorder],
    host: str,
    address: str,
) -> None:
    # Nobody writes an address they mean in circled digits: the spelling itself is the attack.
    downloader = make_downloader(allow_private=False, allowed_networks=["127.0.0.1/32"])
    ascii_url = target_url(address, targets[address])
    await download_file(command(ascii_url), downloader.deps, attempt=1)  # plain ASCII: fine
    targets[address].peers.clear()

    with pytest.raises(BlockedAddress, match=re.escape(address)):
        await download_file(command(target_url(host, targets[address])), downloader.deps, attempt=1)
    assert connections(targets) == []


# -- the connector's check of every peer address, with the other checks bypassed -----------------


async def test_the_connector_refuses_a_blocked_peer_the_resolver_let_through(
    make_downloader: MakeDownloader, targets: dict[str, ConnectionRecorder]
) -> None:
    built = make_downloader(allow_private=False, allowed_networks=["127.0.0.1/32"])
    # An unguarded stub resolver: only the socket factory stands between the name and 127.0.0.2.
    connector = aiohttp.TCPConnector(
        resolver=StaticResolver({"internal.test": "127.0.0.2"}),
        socket_factory=guarded_socket_factory(built.deps.guard),
    )
    async with session_on(connector) as session:
        deps = dataclasses.replace(built.deps, session=session)
        url = target_url("internal.test", targets["127.0.0.2"])
        with pytest.raises(BlockedAddress, match=r"connect to a blocked address 127\.0\.0\.2"):
            await download_file(command(url), deps, attempt=1)
    assert connections(targets) == []


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.2",
        spell("127.0.0.2", "fullwidth-digits-and-stops"),
        spell("127.0.0.2", "ideographic-full-stop"),
    ],
    ids=["ascii", "fullwidth", "ideographic"],
)
async def test_the_connector_refuses_a_blocked_literal_on_its_own(
    targets: dict[str, ConnectionRecorder], host: str
) -> None:
    # Straight to aiohttp, past the URL check: a literal never reaches any resolver.
    guard = AddressGuard(allow_private=False, allowed_networks=["127.0.0.1/32"])
    async with session_on(guarded_connector(guard)) as session:
        with pytest.raises(BlockedAddress, match=r"connect to a blocked address 127\.0\.0\.2"):
            await session.get(target_url(host, targets["127.0.0.2"]))
    assert connections(targets) == []


async def test_the_connector_checks_the_redirects_aiohttp_follows(
    file_server: FileServer, targets: dict[str, ConnectionRecorder]
) -> None:
    guard = AddressGuard(allow_private=False, allowed_networks=["127.0.0.1/32"])
    hop = file_server.redirect_url(
        target_url(spell("127.0.0.2", "ideographic-full-stop"), targets["127.0.0.2"])
    )
    async with session_on(guarded_connector(guard)) as session:
        with pytest.raises(BlockedAddress, match=r"127\.0\.0\.2"):
            await session.get(hop)  # aiohttp follows this redirect itself
    assert [r.path for r in file_server.requests] == ["/redirect"]
    assert connections(targets) == []


async def test_the_connector_lets_an_allowed_peer_through(
    targets: dict[str, ConnectionRecorder],
) -> None:
    guard = AddressGuard(allow_private=False, allowed_networks=["127.0.0.1/32"])
    connector = guarded_connector(guard, StaticResolver({"files.test": "127.0.0.1"}))
    async with session_on(connector) as session:
        for host in ("127.0.0.1", "files.test"):
            async with session.get(target_url(host, targets["127.0.0.1"])) as response:
                assert await response.read() == b"secret"
    assert len(targets["127.0.0.1"].peers) == 2
    assert targets["127.0.0.2"].peers == []
