"""One client's authentication state: whether it has authenticated, and with which key.

Pure bookkeeping, no I/O: the transport asks ``admit`` before running a task. (Which taskUUIDs
are known is the service's results book's business: it outlives sockets.)
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from .errors import Code, ErrorItem
from .messages import Authenticate, AuthenticationResult, Ping, Task

__all__ = ["AuthStage", "AuthState", "invalid_api_key"]


def invalid_api_key(message: str = "Invalid API key.") -> ErrorItem:
    """The answer to a refused key, to an authentication element or an Authorization header."""
    return ErrorItem(
        code=Code.INVALID_API_KEY,
        message=message,
        parameter="apiKey",
        type="string",
        taskType="authentication",
    )


class AuthStage(enum.Enum):
    AWAITING_AUTH = "awaiting-auth"
    AUTHENTICATED = "authenticated"


class AuthState:
    """Whether a socket or request has authenticated, and with which key.

    Args:
        key_is_valid: decides whether an API key is accepted (the service holds the keys).
    """

    def __init__(self, key_is_valid: Callable[[str], bool]) -> None:
        self._key_is_valid = key_is_valid
        self.stage = AuthStage.AWAITING_AUTH
        self.api_key: str | None = None
        self.session_uuid: str | None = None

    def authenticate(
        self, task: Authenticate, session_uuid: str
    ) -> AuthenticationResult | ErrorItem:
        """Accept the key, answering with ``session_uuid`` (the client session the transport
        resumed or created for it), or refuse it. A refused key leaves an earlier
        authentication as it was."""
        if not self._key_is_valid(task.api_key):
            return invalid_api_key()
        self.stage = AuthStage.AUTHENTICATED
        self.api_key = task.api_key
        self.session_uuid = session_uuid
        return AuthenticationResult(taskType="authentication", connectionSessionUUID=session_uuid)

    def trust(self, api_key: str) -> None:
        """Authenticated without checking the key: for an endpoint the operator left open."""
        self.stage = AuthStage.AUTHENTICATED
        self.api_key = api_key

    def admit(self, task: Task) -> ErrorItem | None:
        """None when ``task`` may run now; otherwise the error to send instead.

        Pings and authentication are always admitted (the Python SDK pings before its auth reply
        arrives). Everything else needs an accepted key.
        """
        if isinstance(task, (Ping, Authenticate)):
            return None
        if self.stage is not AuthStage.AUTHENTICATED:
            # missingApiKey makes the Python SDK reconnect and authenticate, which is the cure.
            return ErrorItem(
                code=Code.MISSING_API_KEY,
                message="Not authenticated: send an authentication task with your "
                "apiKey before any other task.",
                parameter="apiKey",
                type="string",
                taskType=task.task_type,
                taskUUID=task.task_uuid,
            )
        return None
