"""Delivery paths against real receivers: async + getResponse, webhooks, uploadEndpoint."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import pytest
import websockets
from aiohttp import web

from tests.support import Client, b64, fixture_bytes, http_get, new_uuid, open_image, serve_app

CAR = b64(fixture_bytes("car-1.jpg"))


def removal(**fields) -> dict:
    return {
        "taskType": "removeBackground",
        "taskUUID": new_uuid(),
        "inputs": {"image": CAR},
        **fields,
    }


@dataclass
class Receiver:
    """A real HTTP server on loopback recording what the service sends it."""

    base_url: str = ""
    requests: list[tuple[str, str, dict, bytes]] = field(default_factory=list)
    scripts: dict[str, list[int]] = field(
        default_factory=dict
    )  # path -> statuses to answer in turn
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self.arrived:
            self.requests.append((request.method, request.path, dict(request.headers), body))
            self.arrived.notify_all()
        if request.path.startswith("/slow"):
            await self.gate.wait()
        script = self.scripts.get(request.path)
        return web.Response(status=script.pop(0) if script else 200)

    async def wait_for(self, count: int, path: str, timeout: float = 60) -> list:
        async with self.arrived:
            await asyncio.wait_for(
                self.arrived.wait_for(lambda: len(self.at(path)) >= count), timeout
            )
        return self.at(path)

    def at(self, path: str) -> list:
        return [r for r in self.requests if r[1] == path]


@pytest.fixture
async def receiver():
    recorder = Receiver()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    runner, port = await serve_app(app)
    recorder.base_url = f"http://127.0.0.1:{port}"
    yield recorder
    recorder.gate.set()
    await runner.cleanup()


async def poll(client: Client, task_uuid: str, attempts: int = 240) -> dict:
    """getResponse until the task is no longer processing; returns the final frame."""
    for _ in range(attempts):
        await client.send({"taskType": "getResponse", "taskUUID": task_uuid})
        frame = await client.recv()
        items = frame.get("data") or frame.get("errors")
        assert items[0]["taskUUID"] == task_uuid
        if "errors" in frame or items[0].get("status") != "processing":
            return frame
        await asyncio.sleep(0.25)
    raise AssertionError("still processing")


# --------------------------------------------------------------------------- async + getResponse


async def test_async_delivery_acknowledges_at_once_and_serves_the_result_by_polling(client: Client):
    task = removal(
        deliveryMethod="async", outputType="base64Data", outputFormat="PNG", includeCost=True
    )
    await client.send(task)
    ack = await client.recv()
    assert ack == {"data": [{"taskType": "removeBackground", "taskUUID": task["taskUUID"]}]}
    await client.send({"taskType": "getResponse", "taskUUID": task["taskUUID"]})
    first = (await client.recv())["data"][0]
    assert first["status"] in ("processing", "success")
    done = (await poll(client, task["taskUUID"]))["data"][0]
    assert done["status"] == "success" and done["taskType"] == "removeBackground"
    assert done["imageUUID"] and done["inputImageUUID"] and done["cost"] == pytest.approx(0.0013)
    image = open_image(__import__("base64").b64decode(done["imageBase64Data"]))
    assert image.size == (480, 360) and image.mode == "RGBA"
    # The result was not pushed on the socket: the next frame answers a ping.
    assert await client.ping()


async def test_async_failures_are_returned_by_get_response_as_errors(client: Client):
    task = removal(deliveryMethod="async", model="no-such-model")
    await client.send(task)
    assert (await client.recv())["data"][0]["taskUUID"] == task["taskUUID"]
    frame = await poll(client, task["taskUUID"])
    (error,) = frame["errors"]
    assert error["code"] == "unsupportedModel" and error["taskUUID"] == task["taskUUID"]


async def test_get_response_also_answers_for_synchronous_tasks(client: Client):
    task = removal(outputType="URL", outputFormat="WEBP")
    answer = await client.run(task)
    polled = (await poll(client, task["taskUUID"]))["data"][0]
    assert polled["status"] == "success"
    assert polled["imageURL"] == answer["imageURL"] and polled["imageUUID"] == answer["imageUUID"]


async def test_get_response_for_an_unknown_task_is_task_not_found(client: Client):
    unknown = new_uuid()
    await client.send({"taskType": "getResponse", "taskUUID": unknown})
    (error,) = (await client.recv())["errors"]
    assert error["code"] == "taskNotFound" and error["taskUUID"] == unknown


async def test_results_are_private_to_the_api_key_that_asked(server, client: Client):
    task = removal()
    await client.run(task)
    async with websockets.connect(server.ws_url) as websocket:
        stranger = Client(websocket)
        await stranger.authenticate("another-key")
        await stranger.send({"taskType": "getResponse", "taskUUID": task["taskUUID"]})
        assert (await stranger.recv())["errors"][0]["code"] == "taskNotFound"


async def test_a_finished_task_uuid_sent_again_is_a_conflict_and_still_pollable(client: Client):
    task = removal()
    first = await client.run(task)
    again = await client.run(dict(task))
    assert again["code"] == "conflictTaskUUID" and again["taskUUID"] == task["taskUUID"]
    polled = (await poll(client, task["taskUUID"]))["data"][0]
    assert polled["imageUUID"] == first["imageUUID"]


# --------------------------------------------------------------------------- webhooks


async def test_webhook_gets_one_post_per_result_with_the_sync_body(
    client: Client, receiver: Receiver
):
    tasks = [
        removal(webhookURL=f"{receiver.base_url}/hook?token=abc", outputFormat="PNG")
        for _ in range(2)
    ]
    await client.send(*tasks)
    acks = [(await client.recv())["data"][0] for _ in tasks]
    assert sorted(a["taskUUID"] for a in acks) == sorted(t["taskUUID"] for t in tasks)
    posts = await receiver.wait_for(2, "/hook")
    bodies = [json.loads(body) for _, _, _, body in posts]
    assert sorted(b["data"][0]["taskUUID"] for b in bodies) == sorted(t["taskUUID"] for t in tasks)
    for method, _, headers, body in posts:
        assert method == "POST" and headers["Content-Type"] == "application/json"
        (item,) = json.loads(body)["data"]
        assert item["taskType"] == "imageBackgroundRemoval" and item["imageURL"].endswith(".png")
        assert http_get(item["imageURL"])[0] == 200
    assert await client.ping()  # nothing else was pushed on the socket


async def test_a_failing_webhook_is_retried_with_backoff(client: Client, receiver: Receiver):
    receiver.scripts["/flaky"] = [500, 503]
    await client.send(removal(webhookURL=f"{receiver.base_url}/flaky"))
    await client.recv()
    posts = await receiver.wait_for(3, "/flaky")
    assert len({body for *_, body in posts}) == 1  # the same body each time


async def test_a_slow_webhook_delays_no_other_task(client: Client, receiver: Receiver):
    slow = removal(webhookURL=f"{receiver.base_url}/slow")
    await client.send(slow)
    await client.recv()  # ack
    await receiver.wait_for(1, "/slow")  # the receiver now holds the POST open
    answer = await client.run(removal(outputType="base64Data"))
    assert answer["kind"] == "data"
    assert not receiver.gate.is_set()


async def test_task_errors_are_posted_to_the_webhook(client: Client, receiver: Receiver):
    task = removal(webhookURL=f"{receiver.base_url}/errors", inputs={"image": b64(b"not an image")})
    await client.send(task)
    await client.recv()
    (post,) = await receiver.wait_for(1, "/errors")
    (error,) = json.loads(post[3])["errors"]
    assert error["code"] == "invalidImage" and error["taskUUID"] == task["taskUUID"]


# --------------------------------------------------------------------------- uploadEndpoint


async def test_upload_endpoint_gets_the_raw_file_by_put(client: Client, receiver: Receiver):
    task = removal(
        uploadEndpoint=f"{receiver.base_url}/bucket/out.png?X-Amz-Signature=abc", outputFormat="PNG"
    )
    item = await client.run(task)
    assert item["kind"] == "data"
    ((method, path, headers, body),) = receiver.at("/bucket/out.png")
    assert method == "PUT" and headers["Content-Type"] == "image/png"
    assert body.startswith(b"\x89PNG\r\n\x1a\n")
    assert http_get(item["imageURL"])[2] == body


async def test_a_refusing_upload_endpoint_fails_the_task(client: Client, receiver: Receiver):
    receiver.scripts["/deny"] = [403]
    item = await client.run(removal(uploadEndpoint=f"{receiver.base_url}/deny"))
    assert item["code"] == "uploadFailed" and item["parameter"] == "uploadEndpoint"


# --------------------------------------------------------------------------- address policy


@pytest.mark.parametrize("field_name", ["webhookURL", "uploadEndpoint"])
async def test_outgoing_urls_obey_the_private_address_policy(
    keyed_server, receiver: Receiver, field_name: str
):
    async with websockets.connect(keyed_server.ws_url) as websocket:
        client = Client(websocket)
        await client.authenticate("secret-one")
        item = await client.run(removal(**{field_name: f"{receiver.base_url}/never"}))
        assert item["code"] == "forbiddenURL" and item["parameter"] == field_name
        item = await client.run(removal(**{field_name: "file:///etc/passwd"}))
        assert item["code"] == "forbiddenURL"
    assert receiver.requests == []
