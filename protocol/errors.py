"""Every error the wire can carry: the item's shape, the codes, and how a code is named.

Error items follow the Runware shape: ``code`` (camelCase), ``message``, ``parameter`` (the field at
fault, as the client spelled its path), ``type`` (the *expected* type of that parameter),
``taskType`` and ``taskUUID`` (without which no SDK can route the error), plus optional range hints.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "ErrorItem",
    "TaskFailure",
    "Code",
    "code_for",
]


class ErrorItem(msgspec.Struct, omit_defaults=True):
    """One element of an ``{"errors": [...]}`` frame."""

    code: str
    message: str
    parameter: str | None = None
    type: str | None = None
    taskType: str | None = None
    taskUUID: str | None = None
    min: int | float | None = None
    max: int | float | None = None
    default: int | float | str | bool | None = None
    retryAfterMs: int | None = None  # with overloaded: when trying again makes sense


class Code:
    """Error codes that are not derived from a parameter name (those come from ``code_for``)."""

    INVALID_JSON = "invalidJSON"
    INVALID_FRAME = "invalidFrame"
    INVALID_TASK = "invalidTask"
    UNSUPPORTED_TASK_TYPE = "unsupportedTaskType"
    INVALID_API_KEY = "invalidApiKey"
    MISSING_API_KEY = "missingApiKey"
    CONFLICT_TASK_UUID = "conflictTaskUUID"
    UNSUPPORTED_MODEL = "unsupportedModel"
    UNKNOWN_IMAGE_UUID = "unknownImageUUID"
    INVALID_IMAGE = "invalidImage"
    IMAGE_TOO_LARGE = "imageTooLarge"
    DOWNLOAD_FAILED = "downloadFailed"
    FORBIDDEN_URL = "forbiddenURL"
    TASK_NOT_FOUND = "taskNotFound"
    UPLOAD_FAILED = "uploadFailed"
    FRAME_TOO_LARGE = "frameTooLarge"  # a frame: a socket message, or a POST /v1 body
    TOO_MANY_TASKS = "tooManyTasks"
    TOO_MANY_TASKS_IN_FLIGHT = "tooManyTasksInFlight"
    TOO_MANY_CONNECTIONS = "tooManyConnections"
    OVERLOADED = "overloaded"
    BODY_TIMEOUT = "bodyTimeout"  # an HTTP request body that did not arrive in time
    STORAGE_FULL = "storageFull"  # the image store has no room: nothing could be written
    SHUTTING_DOWN = "shuttingDown"
    # The distributed mode's queue (Redis) cannot be reached: nothing was accepted.
    SERVICE_UNAVAILABLE = "serviceUnavailable"
    WEBHOOK_FAILED = "webhookFailed"
    WORKER_FAILED = "workerFailed"  # distributed mode: every worker that ran the task stopped
    INTERNAL = "internalServerError"


# Canonical names for parameters whose wire path does not read well as a code suffix: the image of
# a removal task is "inputImage" whichever of its two spellings the client used.
_CODE_NAMES = {
    "inputs.image": "InputImage",
    "inputImage": "InputImage",
    "taskUUID": "TaskUUID",
    "connectionSessionUUID": "ConnectionSessionUUID",
    "rgba": "Rgba",
}


def code_for(prefix: str, parameter: str) -> str:
    """``code_for("invalid", "settings.outputQuality") == "invalidOutputQuality"``.

    The code names the parameter's last path segment (``missingInputImage`` for ``inputs.image``).
    """
    name = _CODE_NAMES.get(parameter)
    if name is None:
        leaf = parameter.rsplit(".", 1)[-1]
        name = _CODE_NAMES.get(leaf, leaf[:1].upper() + leaf[1:])
    return prefix + name


class TaskFailure(Exception):
    """Raised anywhere a task cannot be completed; carries what the client is told.

    ``taskType``/``taskUUID`` are filled in by whoever turns it into an ``ErrorItem``.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        parameter: str | None = None,
        type: str | None = None,
        min: int | float | None = None,
        max: int | float | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.parameter = parameter
        self.type = type
        self.min = min
        self.max = max
        self.retry_after_ms = retry_after_ms

    @classmethod
    def invalid(
        cls,
        parameter: str,
        type: str,
        detail: str,
        min: int | float | None = None,
        max: int | float | None = None,
    ) -> TaskFailure:
        return cls(
            code_for("invalid", parameter),
            f"Invalid value for {parameter} parameter. {detail}",
            parameter=parameter,
            type=type,
            min=min,
            max=max,
        )

    @classmethod
    def missing(cls, parameter: str, type: str) -> TaskFailure:
        return cls(
            code_for("missing", parameter),
            f"Missing required parameter {parameter}.",
            parameter=parameter,
            type=type,
        )

    def item(self, task_type: str | None, task_uuid: str | None) -> ErrorItem:
        return ErrorItem(
            code=self.code,
            message=self.message,
            parameter=self.parameter,
            type=self.type,
            taskType=task_type,
            taskUUID=task_uuid,
            min=self.min,
            max=self.max,
            retryAfterMs=self.retry_after_ms,
        )
