"""service.tasks.dispatch with fakes at its ports: admission, limits, where answers go."""

from __future__ import annotations

import json
import uuid

from protocol.errors import ErrorItem, TaskFailure
from protocol.messages import (
    AuthenticationResult,
    BackgroundRemovalResult,
    PongResult,
    TaskAcknowledgement,
)
from service.tasks.dispatch import ClientLimits
from tests.service.fakes import DispatchRig, ScriptedWork


def new_uuid() -> str:
    return str(uuid.uuid4())


def frame(*tasks: dict) -> bytes:
    return json.dumps(list(tasks)).encode()


AUTH = {"taskType": "authentication", "apiKey": "key"}


def removal(task_uuid: str | None = None, **fields) -> dict:
    return {
        "taskType": "removeBackground",
        "taskUUID": task_uuid or new_uuid(),
        "inputImage": "data:image/png;base64,AAAA",
        **fields,
    }


async def authenticated(rig: DispatchRig) -> DispatchRig:
    await rig.send(frame(AUTH))
    answer = rig.replies.items[-1]
    assert isinstance(answer, AuthenticationResult) and answer.taskType == "authentication"
    assert answer.connectionSessionUUID  # the client session the dispatcher opened
    return rig


async def test_a_ping_is_answered_before_authentication_and_work_is_refused():
    rig = DispatchRig()
    await rig.send(frame({"taskType": "ping", "ping": True}, removal()))
    assert rig.replies.items[0] == PongResult(taskType="ping", pong=True)
    assert rig.replies.codes() == ["missingApiKey"]
    assert rig.work.executed == []


async def test_a_wrong_key_opens_nothing():
    rig = DispatchRig()
    await rig.send(frame({"taskType": "authentication", "apiKey": "wrong"}, removal()))
    assert rig.replies.codes() == ["invalidApiKey", "missingApiKey"]


async def test_an_accepted_removal_runs_and_its_result_goes_to_the_answers():
    rig = await authenticated(DispatchRig())
    task_uuid = new_uuid()
    await rig.send(frame(removal(task_uuid)))
    await rig.settle()
    [result] = rig.answers.items
    assert isinstance(result, BackgroundRemovalResult) and result.taskUUID == task_uuid
    assert rig.workload.unfinished == 0 and rig.dispatcher.accepted == 1
    # recorded: getResponse answers for it, on the reply path
    await rig.send(frame({"taskType": "getResponse", "taskUUID": task_uuid}))
    assert rig.replies.items[-1].status == "success"


async def test_the_executor_sees_the_scope_and_a_client_of_its_own():
    rig = await authenticated(DispatchRig())
    await rig.send(frame(removal()))
    await rig.settle()
    [(_, requester)] = rig.work.executed
    assert requester.answers is rig.answers and len(requester.scope) == 32


async def test_a_reused_task_uuid_is_refused_while_the_first_completes():
    rig = await authenticated(DispatchRig())
    task_uuid = new_uuid()
    rig.work.release.clear()
    await rig.send(frame(removal(task_uuid), removal(task_uuid)))
    assert rig.replies.codes() == ["conflictTaskUUID"]
    rig.work.release.set()
    await rig.settle()
    assert [item.taskUUID for item in rig.answers.items] == [task_uuid]


async def test_limits_per_client_per_frame_and_service_wide():
    limits = ClientLimits(
        frame_error_bytes=1 << 20, max_tasks_per_frame=3, max_in_flight=2, pipeline_slots=1
    )
    rig = await authenticated(DispatchRig(limits=limits, max_queued=100))
    rig.work.release.clear()
    await rig.send(frame(removal(), removal(), removal(), removal()))
    assert rig.replies.codes() == ["tooManyTasks", "tooManyTasksInFlight"]
    rig.workload.max_queued = 2  # the two running fill the service
    rig.work.release.set()
    await rig.settle()
    rig.workload.task_accepted()
    rig.workload.task_accepted()
    await rig.send(frame(removal()))
    refused = rig.replies.items[-1]
    assert refused.code == "overloaded" and refused.retryAfterMs >= 500


async def test_a_frame_over_the_soft_cap_is_refused_whole():
    limits = ClientLimits(
        frame_error_bytes=100, max_tasks_per_frame=8, max_in_flight=4, pipeline_slots=1
    )
    rig = await authenticated(DispatchRig(limits=limits))
    await rig.send(frame(removal(), removal()))
    assert rig.replies.codes() == ["frameTooLarge"] and rig.work.executed == []


async def test_draining_refuses_new_work():
    rig = await authenticated(DispatchRig())
    rig.workload.draining = True
    await rig.send(frame(removal()))
    assert rig.replies.codes() == ["shuttingDown"]


async def test_async_delivery_acknowledges_and_keeps_the_result_in_the_book():
    rig = await authenticated(DispatchRig())
    task_uuid = new_uuid()
    await rig.send(frame(removal(task_uuid, deliveryMethod="async")))
    await rig.settle()
    assert rig.answers.items == [TaskAcknowledgement("removeBackground", task_uuid)]
    await rig.send(frame({"taskType": "getResponse", "taskUUID": task_uuid}))
    assert rig.replies.items[-1].imageURL == "http://x/i.png"


async def test_a_webhook_task_is_acknowledged_and_its_result_posted():
    rig = await authenticated(DispatchRig())
    task_uuid = new_uuid()
    await rig.send(frame(removal(task_uuid, webhookURL="https://hooks.example.com/a")))
    await rig.settle()
    assert rig.answers.items == [TaskAcknowledgement("removeBackground", task_uuid)]
    [(url, body, posted_uuid)] = rig.webhooks.posted
    assert url == "https://hooks.example.com/a" and posted_uuid == task_uuid
    assert json.loads(body)["data"][0]["taskUUID"] == task_uuid


async def test_a_forbidden_destination_is_refused_before_the_acknowledgement():
    rig = await authenticated(DispatchRig())
    await rig.send(frame(removal(webhookURL="https://forbidden.example.com/")))
    await rig.settle()
    assert [item.code for item in rig.answers.items] == ["forbiddenURL"]
    assert rig.work.executed == [] and rig.webhooks.posted == []


async def test_failures_are_answered_recorded_and_vague_when_unexpected():
    def outcome(task):
        if task.settings.post_process_mask:
            return TaskFailure("invalidImage", "bad", parameter="inputImage", type="string")
        return RuntimeError("a bug")

    rig = await authenticated(DispatchRig(work=ScriptedWork(outcome)))
    known, bug = new_uuid(), new_uuid()
    await rig.send(frame(removal(known, postProcessMask=True), removal(bug)))
    await rig.settle()
    by_uuid = {item.taskUUID: item for item in rig.answers.items}
    assert by_uuid[known].code == "invalidImage" and by_uuid[known].parameter == "inputImage"
    assert by_uuid[bug].code == "internalServerError" and "bug" not in by_uuid[bug].message
    await rig.send(frame({"taskType": "getResponse", "taskUUID": known}))
    kept = rig.replies.items[-1]
    assert isinstance(kept, ErrorItem) and (kept.taskUUID, kept.code) == (known, "invalidImage")


async def test_a_handed_over_task_is_answered_by_whoever_took_it():
    rig = await authenticated(DispatchRig(work=ScriptedWork(lambda task: None)))
    task_uuid = new_uuid()
    await rig.send(frame(removal(task_uuid)))
    await rig.settle()
    assert rig.answers.items == []
    await rig.send(frame({"taskType": "getResponse", "taskUUID": task_uuid}))
    assert rig.replies.items[-1].status == "processing"
