"""protocol.auth: what a socket may do before and after authenticating."""

from __future__ import annotations

from protocol.auth import AuthStage, AuthState
from protocol.messages import (
    Authenticate,
    AuthenticationResult,
    BackgroundSettings,
    GetResponse,
    ImageUpload,
    OutputSpec,
    Ping,
    RemoveBackground,
)

U1 = "9ad4918a-e9d0-440a-ac59-057a966cd421"
S1 = "5bedeed1-b86d-4b18-8ced-05682ec000d6"


def removal(task_uuid: str = U1) -> RemoveBackground:
    return RemoveBackground(
        task_uuid=task_uuid,
        task_type="removeBackground",
        model="u2netp",
        image="x",
        image_parameter="inputs.image",
        settings=BackgroundSettings(),
        output=OutputSpec(),
    )


def authenticated(keys=("good",)) -> AuthState:
    state = AuthState(lambda key: key in keys)
    answer = state.authenticate(Authenticate(api_key="good"), S1)
    assert answer == AuthenticationResult(taskType="authentication", connectionSessionUUID=S1)
    return state


def test_pings_and_authentication_are_admitted_before_authentication():
    session = AuthState(lambda key: True)
    assert session.admit(Ping()) is None
    assert session.admit(Authenticate(api_key="k")) is None


def test_work_before_authentication_is_refused_with_the_tasks_uuid():
    session = AuthState(lambda key: True)
    error = session.admit(removal())
    assert (error.code, error.taskUUID, error.taskType) == ("missingApiKey", U1, "removeBackground")
    error = session.admit(ImageUpload(task_uuid=U1, image="x"))
    assert error.taskType == "imageUpload"


def test_a_wrong_key_is_refused_with_task_type_authentication_and_no_task_uuid():
    session = AuthState(lambda key: key == "good")
    error = session.authenticate(Authenticate(api_key="bad"), S1)
    assert (error.code, error.taskType, error.parameter, error.taskUUID) == (
        "invalidApiKey",
        "authentication",
        "apiKey",
        None,
    )
    assert session.stage is AuthStage.AWAITING_AUTH and session.session_uuid is None


def test_authentication_answers_with_the_client_session_the_transport_chose():
    session = AuthState(lambda key: True)
    reply = session.authenticate(Authenticate(api_key="k", session_uuid=S1), S1)
    assert reply == AuthenticationResult(taskType="authentication", connectionSessionUUID=S1)
    assert session.stage is AuthStage.AUTHENTICATED


def test_get_response_needs_authentication_too():
    session = AuthState(lambda key: True)
    assert session.admit(GetResponse(task_uuid=U1)).code == "missingApiKey"
    assert authenticated().admit(GetResponse(task_uuid=U1)) is None
