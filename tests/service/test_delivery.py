"""service.net.delivery with a scripted HTTP port: retries, backoff and what counts as done."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from protocol.errors import Code, TaskFailure
from service.net.delivery import WebhookSender, put_to_upload_endpoint, retrying
from service.net.outbound import OutboundHttp
from tests.support import serve_app


class Script:
    """An attempt that answers with the given statuses (or raises the given failures) in turn."""

    def __init__(self, *outcomes: int | TaskFailure) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def __call__(self) -> int:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, TaskFailure):
            raise outcome
        return outcome


def unreachable() -> TaskFailure:
    return TaskFailure(Code.WEBHOOK_FAILED, "connection refused", parameter="webhookURL")


async def test_retryable_statuses_are_tried_again_until_success():
    attempt = Script(503, 429, 204)
    assert await retrying(attempt, attempts=4, backoff=0) == 204 and attempt.calls == 3


async def test_a_status_that_will_not_change_is_not_retried():
    attempt = Script(404, 200)
    assert await retrying(attempt, attempts=4, backoff=0) == 404 and attempt.calls == 1


async def test_the_last_status_is_returned_when_attempts_run_out():
    attempt = Script(500, 502, 503)
    assert await retrying(attempt, attempts=3, backoff=0) == 503


async def test_connection_failures_are_retried_and_the_last_one_raised():
    attempt = Script(unreachable(), unreachable())
    with pytest.raises(TaskFailure):
        await retrying(attempt, attempts=2, backoff=0)
    assert attempt.calls == 2
    recovered = Script(unreachable(), 200)
    assert await retrying(recovered, attempts=2, backoff=0) == 200


async def test_a_forbidden_url_is_never_retried():
    attempt = Script(TaskFailure(Code.FORBIDDEN_URL, "private", parameter="webhookURL"), 200)
    with pytest.raises(TaskFailure):
        await retrying(attempt, attempts=4, backoff=0)
    assert attempt.calls == 1


class FakeHttp:
    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.sent: list[tuple[str, str, bytes, str]] = []

    async def send(self, method, url, body, content_type, parameter, code) -> int:
        self.sent.append((method, url, body, content_type))
        return self.statuses.pop(0)


async def test_an_upload_endpoint_that_refuses_fails_the_task():
    http = FakeHttp(403)
    with pytest.raises(TaskFailure) as failed:
        await put_to_upload_endpoint(
            http,
            "https://b.example.com/o",
            b"png",
            "image/png",  # type: ignore[arg-type]
            backoff=0,
        )
    assert failed.value.code == "uploadFailed" and "403" in failed.value.message
    assert http.sent == [("PUT", "https://b.example.com/o", b"png", "image/png")]


async def test_webhooks_are_posted_in_the_background_with_retries():
    http = FakeHttp(503, 200)
    sender = WebhookSender(http, attempts=3, backoff=0)  # type: ignore[arg-type]
    sender.deliver("https://hooks.example.com/x", b'{"data":[]}', "t1")
    await sender.close(grace=5)
    assert [(m, u, b) for m, u, b, _ in http.sent] == [
        ("POST", "https://hooks.example.com/x", b'{"data":[]}')
    ] * 2


class Receivers:
    """Real HTTP receivers on loopback addresses: some never answer, one answers at once."""

    def __init__(self) -> None:
        self.delivered = asyncio.Event()
        self.hanging_requests = 0
        self._runners: list[web.AppRunner] = []

    async def _hang(self, request: web.Request) -> web.Response:
        self.hanging_requests += 1
        await asyncio.sleep(3600)
        return web.Response()

    async def _take(self, request: web.Request) -> web.Response:
        self.delivered.set()
        return web.Response(status=204)

    async def start(self, host: str, handler) -> str:
        application = web.Application()
        application.router.add_post("/hook", handler)
        runner, port = await serve_app(application, host, shutdown_timeout=0.1)
        self._runners.append(runner)
        return f"http://{host}:{port}/hook"

    async def hanging(self, host: str) -> str:
        return await self.start(host, self._hang)

    async def healthy(self, host: str) -> str:
        return await self.start(host, self._take)

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()


async def _hanging_attempts_beside_a_healthy_receiver(stuck_hosts: list[str], count: int) -> int:
    """Key A sends ``count`` webhooks spread over receivers on ``stuck_hosts`` that never
    answer; then key B sends one to a healthy receiver, which must get it within 5 s. The
    attempts the hanging receivers saw meanwhile."""
    receivers = Receivers()
    http = OutboundHttp(
        allow_private=True, max_download_bytes=1 << 20, connect_timeout=5, total_timeout=60
    )
    sender = WebhookSender(http, attempts=2, backoff=0.1)
    try:
        stuck = [await receivers.hanging(host) for host in stuck_hosts]
        fine = await receivers.healthy("127.0.0.2")
        for number in range(count):
            sender.deliver(stuck[number % len(stuck)], b"{}", f"stuck-{number}", b"key-a")
        await asyncio.sleep(0.5)
        sender.deliver(fine, b"{}", "fine", b"key-b")
        await asyncio.wait_for(receivers.delivered.wait(), 5)
        return receivers.hanging_requests
    finally:
        await sender.close(grace=0)
        await http.close()
        await receivers.close()


async def test_a_hanging_receiver_does_not_delay_another_hosts_webhook():
    """70 webhooks to a receiver that never answers took the whole pool of 64 for their
    attempts and backoffs: another host's webhook waited ~30 s. Now that host holds at most
    its per-host share."""
    assert await _hanging_attempts_beside_a_healthy_receiver(["127.0.0.1"], 70) <= 8


async def test_one_keys_hanging_receivers_do_not_take_the_pool():
    """One key's webhooks to ten hanging hosts (8 attempts each would be 80, past the pool of
    64) hold at most the per-key share; another key's webhook goes out at once."""
    hosts = [f"127.0.0.{10 + index}" for index in range(10)]
    assert await _hanging_attempts_beside_a_healthy_receiver(hosts, 100) <= 16
