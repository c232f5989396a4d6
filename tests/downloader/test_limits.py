"""The address guard on address strings and the guarded resolver."""

from __future__ import annotations

import pytest

from services.downloader.limits import AddressGuard, GuardedResolver
from shared.errors import BlockedAddress, PermanentError

# Strings only: nothing here is ever connected to.
BLOCKED = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.10",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "192.0.2.1",  # documentation
    "198.18.0.1",  # benchmarking
    "224.0.0.251",  # multicast
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fe80::1%eth0",
    "fc00::1",
    "fd00:ec2::254",  # AWS IPv6 metadata
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
    "ff02::1",
    "64:ff9b::7f00:1",  # NAT64 of loopback
    "64:ff9b::a9fe:a9fe",  # NAT64 of the metadata address
    "2002:7f00:1::1",  # 6to4 of loopback
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo of 127.0.0.1 (obfuscated)
]
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "151.101.1.69",
    "2001:4860:4860::8888",
    "2606:4700::1111",
    "64:ff9b::808:808",  # NAT64 of a public address
]


@pytest.mark.parametrize("address", BLOCKED)
def test_the_guard_blocks_non_public_addresses(address: str) -> None:
    guard = AddressGuard(allow_private=False)
    with pytest.raises(BlockedAddress):
        guard.check(address)


def test_blocked_is_permanent() -> None:
    assert issubclass(BlockedAddress, PermanentError)


@pytest.mark.parametrize("address", PUBLIC)
def test_the_guard_lets_public_addresses_through(address: str) -> None:
    AddressGuard(allow_private=False).check(address)


@pytest.mark.parametrize("address", BLOCKED)
def test_allow_private_turns_the_guard_off(address: str) -> None:
    AddressGuard(allow_private=True).check(address)


def test_allowed_networks_open_only_themselves() -> None:
    guard = AddressGuard(allow_private=False, allowed_networks=["10.0.0.0/8", "127.0.0.1/32"])
    guard.check("10.200.3.4")
    guard.check("127.0.0.1")
    guard.check("::ffff:10.0.0.1")
    for address in ("127.0.0.2", "192.168.0.1", "169.254.169.254", "::1"):
        with pytest.raises(BlockedAddress):
            guard.check(address)
    guard.check("8.8.8.8")  # public stays allowed


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "[::1]", "::1", "169.254.169.254", "[fe80::1]", "10.0.0.1"]
)
def test_check_host_blocks_ip_literals(host: str) -> None:
    with pytest.raises(BlockedAddress):
        AddressGuard(allow_private=False).check_host(host)


@pytest.mark.parametrize("host", ["example.com", "localhost", "metadata.google.internal"])
def test_check_host_leaves_names_to_the_resolver(host: str) -> None:
    AddressGuard(allow_private=False).check_host(host)


async def test_the_resolver_refuses_a_name_that_resolves_to_loopback() -> None:
    resolver = GuardedResolver(AddressGuard(allow_private=False))
    try:
        with pytest.raises(BlockedAddress, match="localhost"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()


async def test_the_resolver_passes_allowed_results_through() -> None:
    resolver = GuardedResolver(
        AddressGuard(allow_private=False, allowed_networks=["127.0.0.0/8", "::1/128"])
    )
    try:
        results = await resolver.resolve("localhost", 8080)
    finally:
        await resolver.close()
    assert results
    assert {r["host"] for r in results} <= {"127.0.0.1", "::1"}
    assert {r["port"] for r in results} == {8080}
