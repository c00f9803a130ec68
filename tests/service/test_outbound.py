"""service.net.outbound: the address policy, caps and timeouts, against real HTTP servers on loopback.

Names are pointed at chosen addresses by an injected resolver; for the requests that must
succeed, the test policy treats 127.0.0.2 as the one "public" address, so that no traffic ever
leaves loopback.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

from protocol.errors import TaskFailure
from service.net.outbound import OutboundHttp, is_public_address, literal_address
from tests.support import serve_app

PUBLIC_FOR_TEST = "127.0.0.2"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.100.100.200",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "::1",
        "::",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "fe80::1%eth0",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::7f00:1",
        "64:ff9b::a00:1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::a00:1",
        "2002:7f00:1::1",
        "2002:a00:1::",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",
        "not an address",
    ],
)
def test_non_public_addresses_are_refused(address):
    assert not is_public_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "64:ff9b::808:808",
        "2002:808:808::1",
        "::ffff:8.8.8.8",
    ],
)
def test_public_addresses_are_allowed(address):
    assert is_public_address(address)


@pytest.mark.parametrize(
    "host,address",
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("[::ffff:7f00:1]", "::ffff:7f00:1"),
        ("example.com", None),
        ("1.2.3.4.5", None),
    ],
)
def test_every_spelling_of_an_ip_literal_is_recognised(host, address):
    assert literal_address(host) == address


class MappedResolver(AbstractResolver):
    """Answers chosen addresses for chosen names; counts lookups."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        self.lookups.append(host)
        addresses = self.answers.get(host)
        if addresses is None:
            raise OSError(f"no such host {host}")
        return [
            {
                "hostname": host,
                "host": a,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for a in addresses
        ]

    async def close(self) -> None:
        pass


def client(resolver: MappedResolver, **caps) -> OutboundHttp:
    return OutboundHttp(
        allow_private=False,
        resolver=resolver,
        address_allowed=lambda a: a == PUBLIC_FOR_TEST or is_public_address(a),
        max_download_bytes=caps.get("max_bytes", 1_000_000),
        connect_timeout=5,
        total_timeout=caps.get("total", 20),
    )


@pytest.fixture
async def origin():
    """A real server on 127.0.0.2 (allowed by the test policy), and one on 127.0.0.1 (refused)."""

    async def image(request):
        return web.Response(body=b"\x89PNG\r\n\x1a\nfake", content_type="image/png")

    async def redirect(request):
        raise web.HTTPFound(request.query["to"])

    async def chain(request):
        n = int(request.match_info["n"])
        raise web.HTTPFound(f"/chain/{n - 1}" if n > 0 else "/image")

    async def huge_declared(request):
        response = web.StreamResponse(headers={"Content-Length": str(50_000_000)})
        await response.prepare(request)
        await asyncio.sleep(3600)  # never sends the body: a client that reads would hang
        return response

    async def chunked(request):
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(100):
            await response.write(b"x" * 65536)
        return response

    async def slow(request):
        response = web.StreamResponse(headers={"Content-Length": str(10 * 1000)})
        await response.prepare(request)
        for _ in range(10):
            await asyncio.sleep(0.2)
            await response.write(b"y" * 1000)
        return response

    app = web.Application()
    app.router.add_get("/image", image)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/chain/{n}", chain)
    app.router.add_get("/huge", huge_declared)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/slow", slow)
    public_runner, public_port = await serve_app(app, PUBLIC_FOR_TEST)
    private_runner, private_port = await serve_app(app, "127.0.0.1")
    yield public_port, private_port
    await public_runner.cleanup()
    await private_runner.cleanup()


async def expect_code(coroutine, code: str) -> TaskFailure:
    with pytest.raises(TaskFailure) as failure:
        await coroutine
    assert failure.value.code == code, failure.value.message
    return failure.value


async def test_a_name_resolving_to_an_allowed_address_is_fetched_once_resolved(origin):
    public_port, _ = origin
    resolver = MappedResolver({"images.test": [PUBLIC_FOR_TEST]})
    http = client(resolver)
    try:
        assert (
            await http.get(f"http://images.test:{public_port}/image", "inputImage")
            == b"\x89PNG\r\n\x1a\nfake"
        )
        assert resolver.lookups == ["images.test"]
    finally:
        await http.close()


@pytest.mark.parametrize(
    "answers", [["127.0.0.1"], ["10.0.0.5"], ["169.254.169.254"], ["100.64.0.1"]]
)
async def test_a_name_resolving_to_a_private_address_is_refused(origin, answers):
    _, private_port = origin
    http = client(MappedResolver({"internal.test": answers}))
    try:
        await expect_code(
            http.get(f"http://internal.test:{private_port}/image", "inputImage"), "forbiddenURL"
        )
    finally:
        await http.close()


async def test_mixed_answers_connect_only_to_an_allowed_address(origin):
    public_port, _ = origin
    http = client(MappedResolver({"mixed.test": ["127.0.0.1", PUBLIC_FOR_TEST]}))
    try:
        assert await http.get(f"http://mixed.test:{public_port}/image", "inputImage")
    finally:
        await http.close()


async def test_dns_rebinding_gets_no_second_lookup_within_a_request(origin):
    """The first answer is checked and used; a rebinding answer never reaches the connection."""
    public_port, _ = origin

    class Rebinding(MappedResolver):
        async def resolve(self, host, port=0, family=socket.AF_INET):
            self.answers[host] = [PUBLIC_FOR_TEST] if not self.lookups else ["127.0.0.1"]
            return await super().resolve(host, port, family)

    resolver = Rebinding({})
    http = client(resolver)
    try:
        assert await http.get(f"http://rebind.test:{public_port}/image", "inputImage")
        assert len(resolver.lookups) == 1
        await http.close()  # drop the pooled connection: the next request connects anew,
        # looks up again, gets the rebinding (private) answer, and is refused
        await expect_code(
            http.get(f"http://rebind.test:{public_port}/image", "inputImage"), "forbiddenURL"
        )
    finally:
        await http.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data/",
        "ftp://example.com/a.png",
        "file:///etc/passwd",
        "gopher://x/",
        "http:///nohost",
    ],
)
async def test_forbidden_urls_are_refused_before_any_connection(url):
    resolver = MappedResolver({})
    http = client(resolver)
    try:
        await expect_code(http.get(url, "inputImage"), "forbiddenURL")
        assert resolver.lookups == []
    finally:
        await http.close()


async def test_every_redirect_is_checked_again(origin):
    public_port, private_port = origin
    http = client(MappedResolver({"images.test": [PUBLIC_FOR_TEST]}))
    base = f"http://images.test:{public_port}"
    try:
        await expect_code(
            http.get(f"{base}/redirect?to=http://127.0.0.1:{private_port}/image", "inputImage"),
            "forbiddenURL",
        )
        assert await http.get(f"{base}/chain/4", "inputImage")  # 5 redirects: allowed
        failure = await expect_code(http.get(f"{base}/chain/5", "inputImage"), "downloadFailed")
        assert "redirects" in failure.message
    finally:
        await http.close()


async def test_size_caps_and_slow_bodies(origin):
    public_port, _ = origin
    http = client(MappedResolver({"images.test": [PUBLIC_FOR_TEST]}), max_bytes=1_000_000)
    base = f"http://images.test:{public_port}"
    try:
        # declared too large: refused from the headers (the body never comes)
        await expect_code(
            asyncio.wait_for(http.get(f"{base}/huge", "inputImage"), 10), "imageTooLarge"
        )
        # chunked, no length: cut as soon as it passes the cap
        await expect_code(http.get(f"{base}/chunked", "inputImage"), "imageTooLarge")
        # slow but legal: arrives whole
        assert await http.get(f"{base}/slow", "inputImage") == b"y" * 10_000
    finally:
        await http.close()


async def test_the_total_timeout_ends_a_stalled_download(origin):
    public_port, _ = origin
    http = client(
        MappedResolver({"images.test": [PUBLIC_FOR_TEST]}), max_bytes=100_000_000, total=1
    )
    try:
        failure = await expect_code(
            http.get(f"http://images.test:{public_port}/huge", "inputImage"), "downloadFailed"
        )
        assert "timed out" in failure.message
    finally:
        await http.close()


@pytest.mark.parametrize("host", ["a\x00b", "127.0.0.1\x00", "exa mple.com", "a\x7fb"])
async def test_a_host_with_control_characters_is_a_malformed_url_not_a_fault(host):
    """A NUL in the host reached the C library's address parser, whose ValueError became a
    500 'the task failed on the server' (found by Schemathesis through /api/remove)."""
    resolver = MappedResolver({})
    http = client(resolver)
    try:
        failure = await expect_code(
            http.get(f"http://{host}/a.jpg", "inputImage"), "invalidInputImage"
        )
        assert "malformed" in failure.message and resolver.lookups == []
    finally:
        await http.close()
