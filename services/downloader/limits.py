"""Per-host concurrency and the address guard that keeps downloads off internal networks."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from shared.errors import BlockedAddress

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

    def check_host(self, host: str) -> None:
        """Check a URL's host when it is an IP literal; names are checked once resolved."""
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return
        self.check(host.strip("[]"))


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


class HostLimits:
    """At most `per_host` concurrent downloads from one host."""

    def __init__(self, per_host: int) -> None:
        self._semaphores: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(per_host)
        )

    @contextlib.asynccontextmanager
    async def slot(self, host: str) -> AsyncIterator[None]:
        async with self._semaphores[host.lower()]:
            yield
