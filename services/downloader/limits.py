"""The address guard that keeps downloads off internal networks, and the per-host limit's port."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from typing import Protocol
from urllib.parse import urlsplit

from aiohappyeyeballs import AddrInfoType, SocketFactoryType
from aiohttp import TCPConnector
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.helpers import is_ip_address
from aiohttp.resolver import DefaultResolver
from yarl import URL

from shared.errors import BlockedAddress, PermanentError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressGuard:
    """Refuses loopback, private, link-local, metadata and other non-global addresses.

    `allow_private` turns the guard off (tests, the local demo); `allowed_networks` lets
    chosen networks through while the guard stays on for everything else.
    """

    def __init__(self, *, allow_private: bool, allowed_networks: Iterable[str] = ()) -> None:
        self.allow_private = allow_private
        self._allowed = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]

    def check(self, address: str) -> None:
        """Raise BlockedAddress unless `address` may be a download target."""
        if self.allow_private:
            return
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address):
            ip = _embedded_ipv4(ip) or ip
        if any(ip in network for network in self._allowed):
            return
        if not ip.is_global or ip.is_multicast:
            raise BlockedAddress(f"blocked address {ip}: not a public internet address")

    def check_url(self, url: str) -> URL:
        """Parse `url` as aiohttp does and check its host; fetch the URL returned, not `url`.

        yarl folds look-alikes (IDNA/NFKC: fullwidth digits, ideographic full stops) into the
        host aiohttp connects to, so that host is the one checked; a host that only becomes an
        IP literal that way is refused, whatever its address.
        """
        try:
            target = URL(url)
            written = urlsplit(url).hostname or ""
        except ValueError as exc:
            raise PermanentError(f"invalid URL {url!r}: {exc}") from None
        host = target.raw_host
        if not host or self.allow_private:
            return target
        if is_ip_address(host) and not written.isascii():
            raise BlockedAddress(
                f"refusing host {written!r}: it becomes the IP address {host} once normalised"
            )
        self.check_host(host)
        return target

    def check_host(self, host: str) -> None:
        """Check a host that aiohttp connects to unresolved; names are checked once resolved."""
        host = host.strip("[]")
        # aiohttp's own test for "skip the resolver", so no literal slips past both checks.
        if self.allow_private or not is_ip_address(host):
            return
        try:
            self.check(host)
        except ValueError:
            raise BlockedAddress(f"blocked address {host}: not a canonical IP address") from None


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    # Mapped, NAT64, 6to4 and Teredo forms reach the IPv4 address inside them.
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


class GuardedResolver(AbstractResolver):
    """Resolves names, then refuses the lot if any address is blocked.

    Checking the resolved address (not the name) is what defeats DNS tricks: the connection
    goes to exactly the addresses checked here, on the first request and on every redirect.
    """

    def __init__(self, guard: AddressGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            try:
                self._guard.check(result["host"])
            except BlockedAddress as exc:
                raise BlockedAddress(f"{host} resolves to a {exc}") from None
        return results

    async def close(self) -> None:
        await self._inner.close()


def guarded_socket_factory(guard: AddressGuard) -> SocketFactoryType:
    """A TCPConnector socket_factory that checks each peer address before it is connected to.

    aiohttp calls it with the exact address of every connection attempt: IP literals (which
    never reach a resolver) and resolved names alike, on the first request and every redirect.
    """

    def open_socket(addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        try:
            guard.check(str(sockaddr[0]))
        except BlockedAddress as exc:
            # Not an OSError, so neither aiohappyeyeballs nor aiohttp wraps it into a
            # ClientConnectorError (which would be retried): it reaches map_errors as is.
            raise BlockedAddress(f"refusing to connect to a {exc}") from None
        return socket.socket(family=family, type=type_, proto=proto)

    return open_socket


def guarded_connector(
    guard: AddressGuard, resolver: AbstractResolver | None = None, *, ttl_dns_cache_s: int = 10
) -> TCPConnector:
    """The downloader's connector: names checked once resolved, every peer before connecting.

    Always both: the socket factory sees one address at a time, and when it refuses every
    address of a name, aiohappyeyeballs (which keeps only the OSErrors of raced attempts)
    raises IndexError, not BlockedAddress, though it connects nowhere. GuardedResolver refuses
    such a name first, with a clear message.
    """
    return TCPConnector(
        resolver=GuardedResolver(guard, resolver),
        socket_factory=guarded_socket_factory(guard),
        limit=0,  # the consumer's concurrency and the host budget bound connections, not the pool
        ttl_dns_cache=ttl_dns_cache_s,
    )


class HostLimits(Protocol):
    """Connections to one host: `slot` holds one of them for its block (budget.HostBudget)."""

    def slot(self, host: str) -> AbstractAsyncContextManager[object]: ...
