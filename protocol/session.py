"""One socket's protocol state: authenticated or not, and which of its tasks are in flight.

Pure bookkeeping, no I/O: the transport asks ``admit`` before running a task and calls ``finish``
when the task's result or error has been produced.
"""

from __future__ import annotations

import enum
from typing import Callable

from .errors import Code, ErrorItem
from .messages import Authenticate, AuthenticationResult, GetResponse, Ping, Task

__all__ = ["SessionState", "Session"]


class SessionState(enum.Enum):
    AWAITING_AUTH = "awaiting-auth"
    OPEN = "open"


class Session:
    """Args:
        key_is_valid: decides whether an API key is accepted (the service holds the keys).
    """

    def __init__(self, key_is_valid: Callable[[str], bool]) -> None:
        self._key_is_valid = key_is_valid
        self.state = SessionState.AWAITING_AUTH
        self.api_key: str | None = None
        self.session_uuid: str | None = None
        self.in_flight: set[str] = set()

    def authenticate(self, task: Authenticate,
                     session_for: Callable[[str | None, str], str]) -> AuthenticationResult | ErrorItem:
        """Open the session, or refuse the key.

        ``session_for(requested_session_uuid, api_key)`` is asked for the connectionSessionUUID
        only once the key is accepted. A refused key leaves an already open session as it was.
        """
        if not self._key_is_valid(task.api_key):
            return ErrorItem(code=Code.INVALID_API_KEY, message="Invalid API key.",
                             parameter="apiKey", type="string", taskType="authentication")
        session_uuid = session_for(task.session_uuid, task.api_key)
        self.state = SessionState.OPEN
        self.api_key = task.api_key
        self.session_uuid = session_uuid
        return AuthenticationResult(taskType="authentication", connectionSessionUUID=session_uuid)

    def admit(self, task: Task) -> ErrorItem | None:
        """None when ``task`` may run now; otherwise the error to send instead.

        Pings and authentication are always admitted (the Python SDK pings before its auth reply
        arrives). Work tasks need an open session and a taskUUID not already in flight here.
        """
        if isinstance(task, (Ping, Authenticate)):
            return None
        if self.state is not SessionState.OPEN:
            # missingApiKey makes the Python SDK reconnect and authenticate, which is the cure.
            return ErrorItem(code=Code.MISSING_API_KEY,
                             message="Not authenticated: send an authentication task with your "
                                     "apiKey before any other task.",
                             parameter="apiKey", type="string",
                             taskType=task.task_type, taskUUID=task.task_uuid)
        if isinstance(task, GetResponse):
            return None  # a poll names another task's UUID; it starts nothing of its own
        if task.task_uuid in self.in_flight:
            return ErrorItem(code=Code.CONFLICT_TASK_UUID,
                             message="A task with this taskUUID is already running.",
                             parameter="taskUUID", type="string",
                             taskType=task.task_type, taskUUID=task.task_uuid)
        self.in_flight.add(task.task_uuid)
        return None

    def finish(self, task_uuid: str) -> None:
        self.in_flight.discard(task_uuid)
