"""The distributed mode for real: a redis-server of our own, gateways and workers as separate
``python -m service`` processes, real websocket and HTTP clients. The two-gateway cluster keeps
its images in S3 (SeaweedFS), as processes on different machines would; the clusters whose
processes the tests kill share a directory instead."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import msgspec
import pytest
import redis
import websockets

from load.harness import LoadConfig, run_load
from service.cluster.jobs import GROUP, Job
from service.tasks.records import scope_of, task_key
from tests.support import (
    UNIT,
    Client,
    S3Process,
    ServerProcess,
    b64,
    fixture_bytes,
    free_port,
    http_get,
    new_uuid,
    open_image,
    start_redis,
    start_seaweedfs,
    start_server,
)

CAR = b64(fixture_bytes("car-1.jpg"))


class Cluster:
    def __init__(self, tmp: Path, fast_model: Path, s3: S3Process | None = None) -> None:
        self.tmp = tmp
        self.fast_model = fast_model
        self.redis = start_redis(tmp)
        self.storage = s3.flags() if s3 else ["--storage-dir", str(tmp / "shared-storage")]
        self.processes: list[ServerProcess] = []

    def start(self, role: str, *flags: str, port: int | None = None) -> ServerProcess:
        process = start_server(
            self.tmp,
            "--redis",
            self.redis.url,
            "--role",
            role,
            *self.storage,
            "--model",
            f"fast={self.fast_model}",
            *flags,
            port=port,
        )
        self.processes.append(process)
        return process

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_seaweedfs(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, fast_model, s3):
    """Two gateways and two workers, images in S3."""
    built = Cluster(tmp_path_factory.mktemp("cluster"), fast_model, s3)
    built.gateways = [built.start("gateway"), built.start("gateway")]
    built.workers = [built.start("worker", "--claim-after", "2") for _ in range(2)]
    yield built
    built.stop()


@pytest.fixture
def lone_cluster(tmp_path, fast_model):
    """A redis and nothing else yet: the test starts what it kills."""
    built = Cluster(tmp_path, fast_model)
    yield built
    built.stop()


def fast(**fields) -> dict:
    return {
        "taskType": "removeBackground",
        "taskUUID": new_uuid(),
        "inputImage": CAR,
        "model": "fast",
        "outputType": "base64Data",
        "outputFormat": "PNG",
        **fields,
    }


def real(**fields) -> dict:
    """A removal with the real u2netp model: long enough to kill something in the middle."""
    return fast(model="runware:109@1", **fields)


def batches_run(worker: ServerProcess) -> float:
    with urllib.request.urlopen(f"{worker.http_url}/metrics") as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("rbg_batch_size_count")
    )


async def connect(
    gateway: ServerProcess, key: str = "cluster-key", session: str | None = None
) -> tuple[Client, str]:
    websocket = await websockets.connect(gateway.ws_url, max_size=None)
    client = Client(websocket)
    auth = {"taskType": "authentication", "apiKey": key}
    if session:
        auth["connectionSessionUUID"] = session
    await client.send(auth)
    return client, (await client.recv())["data"][0]["connectionSessionUUID"]


def jobs_added(cluster: Cluster) -> int:
    try:
        return cluster.client().xinfo_stream("rbg:jobs")["entries-added"]
    except redis.ResponseError:  # no stream yet
        return 0


def wait_for_jobs(cluster: Cluster, count: int, since: int, timeout: float = 30) -> None:
    """Until the gateways have queued ``count`` more jobs than ``since``."""
    deadline = time.monotonic() + timeout * UNIT
    while jobs_added(cluster) < since + count:
        assert time.monotonic() < deadline, "the gateway did not queue the jobs"
        time.sleep(0.005)


def wait_for_pending(cluster: Cluster, at_least: int = 1, timeout: float = 30) -> dict:
    """Until some worker holds ``at_least`` jobs it has read and not finished."""
    client = cluster.client()
    deadline = time.monotonic() + timeout * UNIT
    while time.monotonic() < deadline:
        try:
            summary = client.xpending("rbg:jobs", "workers")
        except redis.ResponseError:  # no group yet
            summary = {"pending": 0}
        if summary["pending"] >= at_least:
            return summary
        time.sleep(0.005)
    raise AssertionError("no worker picked up a job")


# --------------------------------------------------------------------------- the cluster


async def test_200_tasks_over_20_sockets_across_two_gateways_each_answered_once(cluster):
    before = [batches_run(worker) for worker in cluster.workers]
    urls = ",".join(gateway.ws_url for gateway in cluster.gateways)
    report = await run_load(
        LoadConfig(
            url=urls,
            images=(fixture_bytes("car-1.jpg"),),
            connections=20,
            tasks_per_connection=10,
            model="fast",
            output_type="base64Data",
            progress=False,
        )
    )
    summary = report.summary()
    assert summary["tasks_sent"] == 200 and summary["tasks_ok"] == 200, summary
    assert (summary["lost"], summary["duplicated"], summary["cross_delivered"]) == (0, 0, 0)
    assert not summary["connection_failures"]
    ran = [batches_run(worker) - was for worker, was in zip(cluster.workers, before, strict=True)]
    assert all(batches > 0 for batches in ran), f"a worker ran nothing: {ran}"


async def test_one_of_two_workers_killed_mid_batch_loses_nothing(cluster):
    """Sockets on both gateways, both workers busy, one SIGKILLed: the other finishes its jobs."""
    clients = [(await connect(gateway, "kill-one"))[0] for gateway in cluster.gateways * 2]
    tasks = [[real() for _ in range(3)] for _ in clients]
    for client, own in zip(clients, tasks, strict=True):
        await client.send(*own)
    victim = cluster.workers[1]

    def pending_of() -> dict[str, int]:
        consumers = cluster.client().xpending("rbg:jobs", "workers")["consumers"]
        return {c["name"].decode(): c["pending"] for c in consumers}

    deadline = time.monotonic() + 30 * UNIT
    while len([n for n, count in pending_of().items() if count > 0]) < 2:
        assert time.monotonic() < deadline, "both workers never held jobs at once"
        time.sleep(0.005)
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()
    for client, own in zip(clients, tasks, strict=True):
        answers = await client.collect([t["taskUUID"] for t in own], timeout=120)
        assert all(answer["kind"] == "data" for answer in answers.values()), answers
    for client in clients:
        with pytest.raises(asyncio.TimeoutError):  # nothing twice
            await client.recv(timeout=0.5)
        await client.ws.close()
    cluster.workers[1] = cluster.start("worker", "--claim-after", "2")  # for the tests after


async def test_task_uuids_results_and_get_response_are_shared_by_all_gateways(cluster):
    first, second = cluster.gateways
    one, _ = await connect(first, "shared-book")
    two, _ = await connect(second, "shared-book")
    task = fast()
    done = await one.run(dict(task))
    assert done["kind"] == "data"
    again = await two.run(dict(task))
    assert again["code"] == "conflictTaskUUID"
    polled = await two.run({"taskType": "getResponse", "taskUUID": task["taskUUID"]})
    assert polled["status"] == "success" and polled["imageBase64Data"] == done["imageBase64Data"]
    stranger, _ = await connect(second, "another-key")
    unseen = await stranger.run({"taskType": "getResponse", "taskUUID": task["taskUUID"]})
    assert unseen["code"] == "taskNotFound"
    for client in (one, two, stranger):
        await client.ws.close()


async def test_url_outputs_are_presigned_s3_urls_and_outputs_serve_as_inputs(cluster, s3):
    client, _ = await connect(cluster.gateways[0], "s3-user")
    first = await client.run(fast(outputType="URL", ttl=120))
    url = first["imageURL"]
    assert url.startswith(f"{s3.endpoint}/{s3.bucket}/{first['imageUUID']}.png?"), url
    assert "X-Amz-Expires=1" in url and "X-Amz-Signature=" in url  # about the task's ttl: 120 s
    with urllib.request.urlopen(url) as response:
        assert open_image(response.read()).mode == "RGBA"
    # The output, stored by a worker, is the input of the next task on the other gateway.
    other, _ = await connect(cluster.gateways[1], "s3-user")
    second = await other.run(fast(inputImage=first["imageUUID"]))
    assert second["kind"] == "data" and second["inputImageUUID"] == first["imageUUID"]
    for socket_client in (client, other):
        await socket_client.ws.close()


def test_the_rest_twin_on_a_gateway_is_answered_by_the_workers(cluster):
    tasks = [
        fast(),
        fast(deliveryMethod="async"),
        {"taskType": "ping", "ping": True},
        fast(outputQuality=5),
    ]
    request = urllib.request.Request(
        f"{cluster.gateways[1].http_url}/v1",
        data=json.dumps(tasks).encode(),
        method="POST",
        headers={"Authorization": "Bearer rest-cluster", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60 * UNIT) as response:
        answer = json.loads(response.read())
    data = {item.get("taskUUID", "pong"): item for item in answer["data"]}
    assert data[tasks[0]["taskUUID"]]["imageBase64Data"]
    assert data[tasks[1]["taskUUID"]] == {
        "taskType": "removeBackground",
        "taskUUID": tasks[1]["taskUUID"],
    }
    assert data["pong"] == {"taskType": "ping", "pong": True}
    assert [e["code"] for e in answer["errors"]] == ["invalidOutputQuality"]


async def kill_gateway_with_jobs_queued(
    cluster: Cluster, gateway: ServerProcess, key: str, count: int
) -> tuple[str, list[dict]]:
    """A client sends ``count`` slow tasks; its gateway dies (SIGKILL) once Redis has them."""
    client, session = await connect(gateway, key)
    tasks = [real() for _ in range(count)]
    queued_before = jobs_added(cluster)
    await client.send(*tasks)
    wait_for_jobs(cluster, len(tasks), queued_before)
    gateway.process.send_signal(signal.SIGKILL)
    gateway.process.wait()
    return session, tasks


@pytest.mark.parametrize("where", ["another gateway", "the restarted gateway"])
async def test_a_client_resumes_after_its_gateway_died(cluster, where):
    doomed = cluster.start("gateway")
    session, tasks = await kill_gateway_with_jobs_queued(cluster, doomed, "resumer", 4)
    if where == "another gateway":
        target = cluster.gateways[0]
    else:
        target = cluster.start("gateway", port=doomed.port)
    resumed, resumed_session = await connect(target, "resumer", session)
    assert resumed_session == session
    answers = await resumed.collect([t["taskUUID"] for t in tasks], timeout=120)
    assert all(answer["kind"] == "data" for answer in answers.values()), answers
    polled = await resumed.run({"taskType": "getResponse", "taskUUID": tasks[0]["taskUUID"]})
    assert polled["status"] == "success"
    await resumed.ws.close()


# --------------------------------------------------------------------------- one port, two processes


@pytest.fixture
def shared_port_cluster(lone_cluster):
    """Two gateway processes bound to one port (SO_REUSEPORT) and one worker: how one host runs
    more than one process's worth of sockets (docs/scaling.md)."""
    port = free_port()
    lone_cluster.gateways = [
        lone_cluster.start("gateway", "--reuse-port", port=port) for _ in range(2)
    ]
    lone_cluster.workers = [lone_cluster.start("worker")]
    return lone_cluster


def serving_process(websocket, gateways: list[ServerProcess]) -> int:
    """The pid of the gateway process that accepted this client connection: the server side of
    the connection in /proc/net/tcp, and which process holds that socket."""
    client_port = websocket.local_address[1]
    server_port = gateways[0].port
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)
        if local == server_port and remote == client_port:
            inodes.add(f"socket:[{fields[9]}]")
    for gateway in gateways:
        for fd in Path(f"/proc/{gateway.process.pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) in inodes:
                    return gateway.process.pid
    raise AssertionError(f"no gateway holds the connection from port {client_port}")


async def test_two_gateways_on_one_port_share_the_sockets_and_answer_every_task(
    shared_port_cluster,
):
    gateways = shared_port_cluster.gateways
    clients = [(await connect(gateways[0], "shared-port"))[0] for _ in range(16)]
    owners = {serving_process(client.ws, gateways) for client in clients}
    assert owners == {gateway.process.pid for gateway in gateways}  # the kernel used both
    tasks = [fast() for _ in clients]
    for client, task in zip(clients, tasks, strict=True):
        await client.send(task)
    for client, task in zip(clients, tasks, strict=True):
        answer = (await client.collect([task["taskUUID"]]))[task["taskUUID"]]
        assert answer["kind"] == "data" and answer["imageBase64Data"], answer
        await client.ws.close()


async def test_a_client_resumes_on_the_other_process_behind_the_same_port(shared_port_cluster):
    gateways = shared_port_cluster.gateways
    client, session = await connect(gateways[0], "port-resumer")
    first = serving_process(client.ws, gateways)
    tasks = [fast() for _ in range(3)]
    await client.send(*tasks)
    await client.ws.close()
    for _ in range(100):  # new connections until the kernel hands one to the other process
        websocket = await websockets.connect(gateways[0].ws_url, max_size=None)
        if serving_process(websocket, gateways) != first:
            break
        await websocket.close()
    else:
        raise AssertionError("every connection went to the same process")
    resumed = Client(websocket)
    await resumed.send(
        {"taskType": "authentication", "apiKey": "port-resumer", "connectionSessionUUID": session}
    )
    assert (await resumed.recv())["data"][0]["connectionSessionUUID"] == session
    answers = await resumed.collect([t["taskUUID"] for t in tasks], timeout=120)
    assert all(answer["kind"] == "data" for answer in answers.values()), answers
    await resumed.ws.close()


# --------------------------------------------------------------------------- dead workers


async def test_jobs_of_a_worker_killed_mid_batch_are_finished_by_another(lone_cluster):
    gateway = lone_cluster.start("gateway")
    doomed = lone_cluster.start("worker", "--claim-after", "1")
    client, _ = await connect(gateway)
    tasks = [real() for _ in range(6)]
    await client.send(*tasks)
    wait_for_pending(lone_cluster)
    os.kill(doomed.process.pid, signal.SIGKILL)
    doomed.process.wait()
    lone_cluster.start("worker", "--claim-after", "1")
    answers = await client.collect([t["taskUUID"] for t in tasks], timeout=120)
    assert all(answer["kind"] == "data" for answer in answers.values()), answers
    with pytest.raises(asyncio.TimeoutError):  # and nothing twice
        await client.recv(timeout=2)
    await client.ws.close()


async def test_a_job_whose_workers_keep_dying_fails_with_a_clear_error(lone_cluster):
    gateway = lone_cluster.start("gateway")
    doomed = lone_cluster.start("worker", "--claim-after", "1")
    client, _ = await connect(gateway)
    task = real()
    await client.send(task)
    wait_for_pending(lone_cluster)
    os.kill(doomed.process.pid, signal.SIGKILL)
    doomed.process.wait()
    lone_cluster.start("worker", "--claim-after", "1", "--max-attempts", "1")
    answers = await client.collect([task["taskUUID"]], timeout=60)
    failed = answers[task["taskUUID"]]
    assert failed["kind"] == "errors" and failed["code"] == "workerFailed", failed
    assert "stopped" in failed["message"]
    await client.ws.close()


async def test_a_full_backlog_is_refused_with_overloaded_until_workers_catch_up(lone_cluster):
    gateway = lone_cluster.start("gateway", "--max-queued-tasks", "3")
    client, _ = await connect(gateway)
    queued = [real() for _ in range(3)]
    await client.send(*queued)
    wait_for_jobs(lone_cluster, 3, 0)
    refused = [real() for _ in range(2)]
    await client.send(*refused)
    answers = await client.collect([t["taskUUID"] for t in refused], timeout=30)
    for answer in answers.values():
        assert answer["code"] == "overloaded" and answer["retryAfterMs"] >= 500, answer
    lone_cluster.start("worker")  # the backlog drains
    done = await client.collect([t["taskUUID"] for t in queued], timeout=120)
    assert all(answer["kind"] == "data" for answer in done.values()), done
    await asyncio.sleep(1)  # the gateway re-reads the backlog
    assert (await client.run(real()))["kind"] == "data"
    await client.ws.close()


async def test_role_all_is_gateway_and_worker_in_one_process(lone_cluster):
    both = lone_cluster.start("all")
    client, _ = await connect(both)
    assert (await client.run(fast()))["kind"] == "data"
    assert (await client.run(real(outputType="URL")))["imageURL"].startswith(both.http_url)
    await client.ws.close()


async def test_a_worker_serves_probes_but_no_clients(cluster):
    worker = cluster.workers[0]
    with urllib.request.urlopen(f"{worker.http_url}/readyz") as response:
        assert response.status == 200
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(worker.ws_url)
    assert refused.value.response.status_code == 404


def models_listed(process: ServerProcess) -> dict[str, dict]:
    status, _, body = http_get(f"{process.http_url}/v1/models")
    assert status == 200, body
    return {f"{item['model']} {item['provider']}": item for item in json.loads(body)["data"]}


def test_a_gateway_lists_the_models_its_live_workers_serve(lone_cluster):
    gateway = lone_cluster.start("gateway")
    assert models_listed(gateway) == {}  # no worker yet: nothing is served
    worker = lone_cluster.start("worker", "--runtime", "onnxruntime")
    assert eventually(lambda: len(models_listed(gateway)) == 3, 10)
    listed = {item["model"]: item for item in models_listed(gateway).values()}
    assert sorted(listed) == ["fast", "runware:109@1", "u2netp"]
    assert listed["runware:109@1"]["standIn"] and listed["fast"]["fileName"] == "fast.onnx"
    assert listed["u2netp"]["provider"] == "CPUExecutionProvider"
    assert models_listed(worker) == models_listed(gateway)
    worker.stop()  # a worker that stops takes its models out of the list
    assert eventually(lambda: models_listed(gateway) == {}, 10)


async def test_sessions_of_a_dead_gateway_expire_after_the_linger(lone_cluster):
    gateway = lone_cluster.start("gateway", "--session-linger", "2")
    client, session = await connect(gateway)
    redis_client = lone_cluster.client()
    key = f"rbg:session:{session}"
    assert 0 < redis_client.ttl(key) <= 2  # held, but never without an expiry
    gateway.process.send_signal(signal.SIGKILL)
    gateway.process.wait()
    deadline = time.monotonic() + 10 * UNIT
    while redis_client.exists(key):
        assert time.monotonic() < deadline, "the dead gateway's session never expired"
        time.sleep(0.1)


async def test_an_answer_whose_wake_up_was_lost_still_arrives(cluster):
    """Pub/sub is at most once; the outbox is read now and then without a wake-up too."""
    client, session = await connect(cluster.gateways[0], "lost-wake-up")
    item = {"taskType": "ping", "pong": True}
    cluster.client().xadd(
        f"rbg:outbox:{session}", {"kind": "data", "item": json.dumps(item)}
    )  # and no PUBLISH
    assert await client.recv(timeout=15) == {"data": [item]}
    await client.ws.close()


# --------------------------------------------------------------------------- a Redis restart


def ready(process: ServerProcess) -> int:
    try:
        with urllib.request.urlopen(f"{process.http_url}/readyz", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def eventually(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds * UNIT
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def restart_redis(cluster: Cluster, while_down=None, persistent: bool = False) -> None:
    """Stop the cluster's redis-server and start another on its port: empty, or (persistent)
    with what the first wrote to its append-only file."""
    cluster.redis.stop()
    if while_down is not None:
        while_down()
    cluster.redis = start_redis(cluster.tmp, port=cluster.redis.port, persistent=persistent)


async def test_the_cluster_works_again_after_a_redis_restart(lone_cluster):
    gateway, worker = lone_cluster.start("gateway"), lone_cluster.start("worker")
    async with websockets.connect(gateway.ws_url, max_size=None) as before:
        first = Client(before)
        await first.authenticate("restart")
        assert (await first.run(fast(), timeout=30))["kind"] == "data"

        def while_down() -> None:
            assert eventually(lambda: ready(gateway) == 503 and ready(worker) == 503, 10)

        restart_redis(lone_cluster, while_down)
        assert eventually(lambda: ready(gateway) == 200 and ready(worker) == 200, 20)
        async with websockets.connect(gateway.ws_url, max_size=None) as after:
            second = Client(after)
            await second.authenticate("restart")
            assert (await second.run(fast(), timeout=30))["kind"] == "data"
        # the task answered before the restart is not reported lost afterwards
        with pytest.raises(asyncio.TimeoutError):
            await first.recv(timeout=5)


async def test_a_task_sent_while_redis_is_down_gets_a_clear_error(lone_cluster):
    gateway = lone_cluster.start("gateway")
    lone_cluster.start("worker")
    async with websockets.connect(gateway.ws_url, max_size=None) as websocket:
        client = Client(websocket)
        await client.authenticate("restart")
        lone_cluster.redis.stop()
        try:
            answer = await client.run(fast(), timeout=30)
            assert answer["code"] == "serviceUnavailable" and answer["retryAfterMs"] > 0
            assert await client.ping()
        finally:
            lone_cluster.redis = start_redis(lone_cluster.tmp, port=lone_cluster.redis.port)


async def queued_across_a_restart(cluster: Cluster, persistent: bool, then=None) -> dict:
    """A task queued while no worker runs, Redis restarted under it (``then`` called after the
    restart), and the task's one answer."""
    gateway = cluster.start("gateway")
    async with websockets.connect(gateway.ws_url, max_size=None) as websocket:
        client = Client(websocket)
        await client.authenticate("restart")
        task = fast()
        await client.send(task)
        assert eventually(lambda: cluster.client().xlen("rbg:jobs") == 1, 10)
        restart_redis(cluster, persistent=persistent)
        if then is not None:
            then()
        return (await client.collect([task["taskUUID"]], timeout=30))[task["taskUUID"]]


async def test_a_job_lost_with_redis_is_answered_not_forgotten(lone_cluster):
    """No worker yet: the job waits in Redis, which restarts empty. The client is told."""
    answer = await queued_across_a_restart(lone_cluster, persistent=False)
    assert answer["code"] == "workerFailed" and "lost" in answer["message"]


async def test_a_job_kept_by_a_persistent_redis_runs_after_its_restart(tmp_path, fast_model):
    """With an append-only file the queued job survives the restart and is answered."""
    cluster = Cluster(tmp_path, fast_model)
    cluster.redis.stop()
    cluster.redis = start_redis(tmp_path, port=cluster.redis.port, persistent=True)
    try:
        answer = await queued_across_a_restart(
            cluster, persistent=True, then=lambda: cluster.start("worker")
        )
        assert answer["kind"] == "data"
    finally:
        cluster.stop()


def victim_holds(cluster: Cluster, worker: ServerProcess) -> int:
    """Jobs ``worker`` has read and not finished (its consumer name ends with its pid)."""
    if not jobs_added(cluster):
        return 0
    consumers = cluster.client().xpending("rbg:jobs", "workers")["consumers"]
    suffix = f"-{worker.process.pid}"
    return sum(c["pending"] for c in consumers if c["name"].decode().endswith(suffix))


def whereabouts(cluster: Cluster, key: str, session: str, task_uuids: list[str]) -> list[str]:
    """Where each task is in Redis: its record's state, its job and who holds it, its answer
    in the client session's outbox."""
    client = cluster.client()
    jobs = {}
    for entry_id, fields in client.xrange("rbg:jobs"):
        jobs[msgspec.msgpack.decode(fields[b"job"], type=Job).task.task_uuid] = entry_id
    pending = {}
    if jobs:
        for held in client.xpending_range("rbg:jobs", GROUP, "-", "+", 100_000):
            pending[held["message_id"]] = held
    outbox = {fields.get(b"task") for _, fields in client.xrange(f"rbg:outbox:{session}")}
    lines = []
    for task_uuid in task_uuids:
        record = client.hget(f"rbg:task:{scope_of(key).hex()}:{task_key(task_uuid)}", "state")
        entry = jobs.get(task_uuid)
        held = pending.get(entry)
        if entry is None:
            job = "no job in the stream"
        elif held is None:
            job = f"job {entry.decode()} not read yet"
        else:
            job = f"job {entry.decode()} held by {held['consumer'].decode()}"
            job += f" (delivered {held['times_delivered']} times)"
        lines.append(
            f"{task_uuid}: record {record and record.decode()}, {job}, answer in the outbox: "
            f"{task_key(task_uuid).encode() in outbox}"
        )
    return lines


async def test_a_worker_killed_under_load_leaves_every_task_answered_exactly_once(lone_cluster):
    """One gateway, three one-core workers, 200 tasks over 10 sockets of 10 keys; one worker is
    SIGKILLed while all are busy. Every task is answered once, and getResponse, asked for each
    before its answer came, reports it (processing or ended), never as unknown. A task left
    unanswered is reported with where it is (record, job, claim, outbox)."""
    gateway = lone_cluster.start("gateway")
    flags = ("--claim-after", "5", "--cpu-workers", "1")
    workers = [lone_cluster.start("worker", *flags) for _ in range(3)]
    keys = [f"killed-under-load-{n}" for n in range(10)]
    connected = [await connect(gateway, key) for key in keys]
    clients = [client for client, _ in connected]
    tasks = [[fast() for _ in range(20)] for _ in clients]
    for client, own in zip(clients, tasks, strict=True):
        for start in range(0, 20, 5):
            await client.send(*own[start : start + 5])
    victim = workers[0]
    deadline = time.monotonic() + 30 * UNIT
    while victim_holds(lone_cluster, victim) == 0:
        assert time.monotonic() < deadline, "the worker never held a job"
        await asyncio.sleep(0.005)
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()
    # a second socket per key asks getResponse for every task while the answers come
    pollers = [(await connect(gateway, f"killed-under-load-{n}"))[0] for n in range(10)]
    polled = []
    for poller, own in zip(pollers, tasks, strict=True):
        polls = [{"taskType": "getResponse", "taskUUID": t["taskUUID"]} for t in own]
        await poller.send(*polls)
        polled.append(poller.collect([t["taskUUID"] for t in own], timeout=60))
    answered: list[dict[str, dict]] = [{} for _ in clients]
    collected = [
        client.collect([t["taskUUID"] for t in own], timeout=180, found=found)
        for client, own, found in zip(clients, tasks, answered, strict=True)
    ]
    try:
        everything = await asyncio.gather(*collected, *polled)
    except TimeoutError:
        missing = []
        for key, (_, session), own, found in zip(keys, connected, tasks, answered, strict=True):
            left = [t["taskUUID"] for t in own if t["taskUUID"] not in found]
            missing += whereabouts(lone_cluster, key, session, left)
        pytest.fail("tasks left unanswered:\n" + "\n".join(missing))
    for own in everything[: len(clients)]:
        assert all(answer["kind"] == "data" for answer in own.values()), own
    for replies in everything[len(clients) :]:
        unknown = [r for r in replies.values() if r["kind"] == "errors"]
        assert not unknown, unknown
    for client in clients:
        with pytest.raises(asyncio.TimeoutError):  # nothing twice
            await client.recv(timeout=0.5)
        await client.ws.close()
    for poller in pollers:
        await poller.ws.close()
