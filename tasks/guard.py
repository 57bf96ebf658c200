"""Server-side request forgery guard: refuse connections to non-public addresses.

Article links come from feeds anyone can write. Before any connection, the host is resolved
and every address checked: loopback, private, link-local (cloud metadata), multicast, reserved
and unspecified addresses are refused unless the host or network is allowed in config. The
check sits in the connection layer (an httpcore network backend), so it applies to every
redirect hop, and the connection goes to the address that was checked (no DNS rebinding window).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedAddressError(Exception):
    """The host resolves to an address the guard refuses."""

    def __init__(self, host: str, address: str) -> None:
        self.host = host
        self.address = address
        super().__init__(
            f"refused to connect to {host} ({address}): not a public address "
            "(allow it with fetch.allow_hosts or fetch.allow_networks)"
        )


class ResolveError(Exception):
    def __init__(self, host: str, detail: str) -> None:
        super().__init__(f"cannot resolve {host}: {detail}")


@dataclass(frozen=True)
class AddressPolicy:
    block_private: bool = True
    allow_hosts: frozenset[str] = frozenset()
    allow_networks: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def build(
        cls, block_private: bool, hosts: Iterable[str], networks: Iterable[str]
    ) -> AddressPolicy:
        return cls(
            block_private=block_private,
            allow_hosts=frozenset(h.lower().rstrip(".") for h in hosts),
            allow_networks=tuple(ipaddress.ip_network(n, strict=False) for n in networks),
        )

    def allows(self, host: str, address: str) -> bool:
        if not self.block_private or host.lower().rstrip(".") in self.allow_hosts:
            return True
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allow_networks):
            return True
        return ip.is_global and not ip.is_multicast


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks every address, then connects to the first one allowed."""

    def __init__(self, policy: AddressPolicy, inner: httpcore.AsyncNetworkBackend) -> None:
        self.policy = policy
        self.inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ResolveError(host, str(exc)) from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise ResolveError(host, "no addresses")
        for addr in addresses:
            if not self.policy.allows(host, addr):
                raise BlockedAddressError(host, addr)
        last: Exception | None = None
        for addr in addresses:
            try:
                return await self.inner.connect_tcp(
                    addr, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:  # try the host's next address
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddressError(path, "unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
