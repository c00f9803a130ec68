"""Every HTTP request the service makes (URL inputs, webhooks, upload endpoints), under one
address policy.

Unless ``allow_private`` is set, only http/https URLs to public addresses are reached: IP literals
are checked before connecting, and names are resolved once by a resolver that hands aiohttp only
public addresses, so the connection goes to the address that was checked (no DNS rebinding).
Redirects are followed by hand (GET only) and each hop is checked again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Callable
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from protocol.errors import Code, TaskFailure

__all__ = ["OutboundHttp", "is_public_address", "literal_address"]

_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for: mapped, 6to4, NAT64 or Teredo (client)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in network for network in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public_address(text: str) -> bool:
    """True only for globally routable unicast addresses.

    Refuses loopback, private, link-local, CGNAT 100.64.0.0/10 (where some clouds keep their
    metadata service), multicast, reserved and unspecified addresses, IPv6 ULA and link-local,
    and the IPv4-mapped, 6to4, NAT64 and Teredo forms of any refused IPv4 address.
    """
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public_address(str(embedded))
    return address.is_global and not address.is_multicast


# A host as yarl leaves it (names in IDNA's ASCII form): a name, an IPv4 literal in any of its
# spellings, or an IPv6 literal in brackets with an optional zone.
_HOST = re.compile(r"[A-Za-z0-9._~%:\[\]-]+")


def literal_address(host: str) -> str | None:
    """The address a URL host spells, in any of its forms (decimal ``2130706433``, hex
    ``0x7f000001``, octal ``0177.0.0.1``, short ``127.1``, IPv6 in brackets), or None for a name."""
    bare = host.strip("[]").split("%", 1)[0]
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(bare))  # the C library's liberal IPv4 parser
    except OSError:
        return None


class _ForbiddenAddress(OSError):
    pass


class _PolicyResolver(AbstractResolver):
    """Resolves once and returns only the addresses the policy allows: aiohttp connects to one
    of those, so a second, different DNS answer (rebinding) never comes into play."""

    def __init__(self, inner: AbstractResolver, allowed: Callable[[str], bool]) -> None:
        self._inner = inner
        self._allowed = allowed

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        permitted = [answer for answer in answers if self._allowed(answer["host"])]
        if not permitted:
            raise _ForbiddenAddress(f"{host} resolves to no public address")
        return permitted

    async def close(self) -> None:
        await self._inner.close()


def _failure(code: str, message: str, parameter: str, **hints: int) -> TaskFailure:
    return TaskFailure(code, message, parameter=parameter, type="string", **hints)


class OutboundHttp:
    """Every HTTP request the service makes, under one address policy.

    Args:
        allow_private: reach loopback/private addresses too (trusted deployments, tests).
        max_download_bytes: the most a GET may return.
        connect_timeout / total_timeout: seconds, for every request.
        resolver: how names are looked up (aiohttp's threaded getaddrinfo by default; tests
            point names at chosen addresses).
        address_allowed: the policy for one address (``is_public_address`` by default).
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        max_download_bytes: int,
        connect_timeout: float,
        total_timeout: float,
        resolver: AbstractResolver | None = None,
        address_allowed: Callable[[str], bool] = is_public_address,
    ) -> None:
        self.allow_private = allow_private
        self.max_download_bytes = max_download_bytes
        self._resolver = resolver
        self._allowed = (lambda address: True) if allow_private else address_allowed
        self._timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            inner = self._resolver or aiohttp.ThreadedResolver()
            # No DNS cache: each connection is made to an answer checked for that connection.
            connector = aiohttp.TCPConnector(
                resolver=_PolicyResolver(inner, self._allowed), limit=128, use_dns_cache=False
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check_url(self, url: str, parameter: str) -> None:
        """Refuse other schemes and non-public IP literals (names are checked when resolved).

        Raises TaskFailure (forbiddenURL / invalid<Parameter>)."""
        try:
            parsed = URL(url)
        except ValueError:
            raise TaskFailure.invalid(parameter, "string", "The URL is malformed.") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise _failure(Code.FORBIDDEN_URL, "Only http and https URLs are accepted.", parameter)
        if _HOST.fullmatch(parsed.host) is None:  # a NUL or a space would reach the resolver
            raise TaskFailure.invalid(parameter, "string", "The URL is malformed.")
        address = literal_address(parsed.host)
        if address is not None and not self._allowed(address):
            raise _failure(
                Code.FORBIDDEN_URL,
                f"The URL points to a non-public address ({address}).",
                parameter,
            )

    async def get(self, url: str, parameter: str) -> bytes:
        """GET ``url`` (following up to 5 checked redirects), at most max_download_bytes."""

        async def attempt() -> bytes:
            nonlocal url
            for _ in range(_MAX_REDIRECTS + 1):
                self.check_url(url, parameter)
                async with self._client().get(url, allow_redirects=False) as response:
                    if response.status in _REDIRECTS and "Location" in response.headers:
                        url = urljoin(url, response.headers["Location"])
                        continue
                    if response.status != 200:
                        raise _failure(
                            Code.DOWNLOAD_FAILED,
                            f"Fetching the image answered HTTP {response.status}.",
                            parameter,
                        )
                    return await self._read_capped(response, parameter)
            raise _failure(
                Code.DOWNLOAD_FAILED, f"More than {_MAX_REDIRECTS} redirects.", parameter
            )

        return await self._guarded(attempt(), parameter, Code.DOWNLOAD_FAILED, "Fetching the image")

    async def send(
        self,
        method: str,
        url: str,
        body: bytes,
        content_type: str,
        parameter: str,
        failure_code: str,
    ) -> int:
        """POST/PUT ``body``; returns the HTTP status. Redirects are not followed (a redirected
        POST/PUT would lose or change its body). Raises TaskFailure(failure_code) on no answer."""
        self.check_url(url, parameter)

        async def attempt() -> int:
            async with self._client().request(
                method,
                url,
                data=body,
                allow_redirects=False,
                headers={"Content-Type": content_type},
            ) as response:
                await response.read()
                return response.status

        return await self._guarded(attempt(), parameter, failure_code, f"{method} {parameter}")

    async def _guarded(self, request, parameter: str, failure_code: str, what: str):
        """Run ``request``, turning every client-side failure into a TaskFailure."""
        try:
            return await request
        except aiohttp.ClientConnectorError as error:
            if isinstance(error.os_error, _ForbiddenAddress) or isinstance(
                error.__cause__, _ForbiddenAddress
            ):
                raise _failure(
                    Code.FORBIDDEN_URL, "The URL points to a non-public address.", parameter
                ) from None
            raise _failure(
                failure_code, f"{what} failed: could not connect ({error}).", parameter
            ) from None
        except (TimeoutError, aiohttp.ClientError) as error:
            reason = "timed out" if isinstance(error, asyncio.TimeoutError) else str(error)
            raise _failure(failure_code, f"{what} failed: {reason}.", parameter) from None

    async def _read_capped(self, response: aiohttp.ClientResponse, parameter: str) -> bytes:
        cap = self.max_download_bytes
        too_large = _failure(
            Code.IMAGE_TOO_LARGE,
            f"The image at the URL is larger than {cap:,} bytes.",
            parameter,
            max=cap,
        )
        if response.content_length is not None and response.content_length > cap:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(256 * 1024):
            size += len(chunk)
            if size > cap:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)
