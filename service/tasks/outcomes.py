"""What becomes of a task's outcome: where it goes, and how a failure reads."""

from __future__ import annotations

import enum
import logging
from typing import Any

from protocol.errors import Code, ErrorItem, TaskFailure
from protocol.messages import RemoveBackground, Task

from .ports import WorkTask

__all__ = ["Destination", "destination", "acknowledged_at_once", "error_item_for", "refusal"]

log = logging.getLogger(__name__)


class Destination(enum.Enum):
    CLIENT = "client"  # the answer goes back to the client (socket session or REST response)
    BOOK = "book"  # deliveryMethod async: acknowledged at once, the outcome kept for getResponse
    WEBHOOK = "webhook"  # acknowledged at once, the outcome POSTed to webhookURL


def destination(task: WorkTask) -> Destination:
    if isinstance(task, RemoveBackground):
        if task.webhook_url is not None:
            return Destination.WEBHOOK
        if task.delivery_method == "async":
            return Destination.BOOK
    return Destination.CLIENT


def acknowledged_at_once(task: WorkTask) -> bool:
    """Async and webhook tasks are acknowledged at once instead of answered in place."""
    return destination(task) is not Destination.CLIENT


def error_item_for(task: Task, error: Exception) -> ErrorItem:
    """A task's failure as its error item; anything unexpected is logged and stays vague."""
    if isinstance(error, TaskFailure):
        return error.item(task.task_type, task.task_uuid)
    log.error("task %s failed", task.task_uuid, exc_info=error)
    return ErrorItem(
        code=Code.INTERNAL,
        message="The task failed on the server.",
        taskType=task.task_type,
        taskUUID=task.task_uuid,
    )


def refusal(task: Task, code: str, message: str, **fields: Any) -> ErrorItem:
    return ErrorItem(
        code=code, message=message, taskType=task.task_type, taskUUID=task.task_uuid, **fields
    )
