"""service.net.delivery with a scripted HTTP port: retries, backoff and what counts as done."""

from __future__ import annotations

import pytest

from protocol.errors import Code, TaskFailure
from service.net.delivery import WebhookSender, put_to_upload_endpoint, retrying


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
