"""The messages: wire structs as clients send them, the typed tasks the service runs, and results.

Three layers, each a msgspec struct:
- ``*Request``: the JSON object of one task as it arrives. Types and ranges are checked here by
  msgspec; unknown fields are ignored (the SDKs add some, e.g. ``providerSettings``).
- typed tasks (``Authenticate``, ``Ping``, ``ImageUpload``, ``RemoveBackground``, ``GetResponse``):
  one normalised shape per kind of work, whatever spelling the client used.
- results: what goes back under ``data``. ``taskType`` is never given a default, because
  ``omit_defaults`` would then drop it from the wire.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .errors import ErrorItem

__all__ = [
    "AnswerItem",
    "AnswerFrame",
    "OutputType",
    "OutputFormat",
    "DeliveryMethod",
    "UUID_CORE",
    "UUID_PATTERN",
    "MAX_TTL",
    "OUTPUT_TYPES",
    "OUTPUT_FORMATS",
    "DEFAULT_MODEL",
    "parse_rgba",
    "RGBA_TEXT_PATTERN",
    "AuthenticationRequest",
    "PingRequest",
    "ImageUploadRequest",
    "GetResponseRequest",
    "RemoveBackgroundRequest",
    "BackgroundSettingsFields",
    "InputsField",
    "Authenticate",
    "Ping",
    "ImageUpload",
    "GetResponse",
    "RemoveBackground",
    "BackgroundSettings",
    "OutputSpec",
    "Task",
    "AuthenticationResult",
    "PongResult",
    "ImageUploadResult",
    "BackgroundRemovalResult",
    "TaskAcknowledgement",
    "TaskStatusItem",
    "DataFrame",
    "ErrorsFrame",
    "RestResponse",
    "ModelInfo",
    "ModelList",
    "RembgRemoveParameters",
    "RembgParameterError",
    "RembgError",
    "REQUEST_TYPES",
    "RESULT_TYPES",
]

UUID_CORE = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# The whole string, and nothing after it: a bare $ would also match before a final newline.
UUID_PATTERN = rf"^{UUID_CORE}$(?!\n)"
MAX_TTL = 30 * 86_400  # seconds: the longest a stored output may live
TaskUUID = Annotated[str, Meta(pattern=UUID_PATTERN)]
Threshold = Annotated[int, Meta(ge=1, le=255)]
Channel = Annotated[int, Meta(ge=0, le=255)]
Rgba = Annotated[list[Channel], Meta(min_length=4, max_length=4)]


_CHANNEL_TEXT = r"[ \t]*\+?0*(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])[ \t]*"
# ``R,G,B`` or ``R,G,B,A`` as people type it: decimal 0-255, spaces around a value allowed.
# The same text in Python and in JSON Schema's (ECMA 262) regular expressions.
_RGBA_TEXT = rf"{_CHANNEL_TEXT}(,{_CHANNEL_TEXT}){{2,3}}"
RGBA_TEXT_PATTERN = f"^{_RGBA_TEXT}$"


def parse_rgba(text: str) -> list[int]:
    """A colour as people type it, ``R,G,B`` (opaque) or ``R,G,B,A``, as an rgba list.
    Raises ValueError saying what is expected."""
    if re.fullmatch(_RGBA_TEXT, text) is None:
        raise ValueError(f"expected R,G,B or R,G,B,A with values 0-255, got {text!r}")
    values = [int(part) for part in text.split(",")]
    return values if len(values) == 4 else [*values, 255]


OutputType = Literal["URL", "dataURI", "base64Data"]
OutputFormat = Literal["JPG", "PNG", "WEBP"]
DeliveryMethod = Literal["sync", "async"]
OUTPUT_TYPES: tuple[OutputType, ...] = ("URL", "dataURI", "base64Data")
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("JPG", "PNG", "WEBP")
DEFAULT_MODEL = "runware:109@1"  # "RemBG 1.4" on the Runware platform


# --------------------------------------------------------------------------- wire requests


class AuthenticationRequest(msgspec.Struct):
    """The first frame on a connection; answered with a connectionSessionUUID."""

    taskType: Literal["authentication"]
    apiKey: str
    connectionSessionUUID: TaskUUID | None = None


class PingRequest(msgspec.Struct):
    """Heartbeat; answered with pong, also before authentication."""

    taskType: Literal["ping"]
    ping: bool | None = None


class ImageUploadRequest(msgspec.Struct):
    """Store an image (data URI, bare base64 or http(s) URL) for use by UUID."""

    taskType: Literal["imageUpload"]
    taskUUID: TaskUUID
    image: str


class GetResponseRequest(msgspec.Struct):
    """Poll the outcome of an earlier task by its taskUUID."""

    taskType: Literal["getResponse"]
    taskUUID: TaskUUID


class InputsField(msgspec.Struct):
    image: str | None = None


class BackgroundSettingsFields(msgspec.Struct, kw_only=True):
    """The settings of a removal; nested under ``settings`` or flattened to the task's top level."""

    rgba: Rgba | None = None
    postProcessMask: bool | None = None
    returnOnlyMask: bool | None = None
    alphaMatting: bool | None = None
    alphaMattingForegroundThreshold: Threshold | None = None
    alphaMattingBackgroundThreshold: Threshold | None = None
    alphaMattingErodeSize: Threshold | None = None
    decontaminate: bool | None = None  # our extension: rembg's -dc, colour fringes removed


class RemoveBackgroundRequest(BackgroundSettingsFields, kw_only=True):
    """``removeBackground`` (modern or flat form) and ``imageBackgroundRemoval`` (legacy)."""

    taskType: Literal["removeBackground", "imageBackgroundRemoval"]
    taskUUID: TaskUUID
    model: str | int | None = None
    inputs: InputsField | None = None
    inputImage: str | None = None
    settings: BackgroundSettingsFields | None = None
    # Literal checks happen after case folding in the codec, so these stay plain strings here.
    outputType: str | None = None
    outputFormat: str | None = None
    outputQuality: Annotated[int, Meta(ge=20, le=99)] | None = None
    ttl: Annotated[int, Meta(ge=60, le=MAX_TTL)] | None = None
    includeCost: bool | None = None
    deliveryMethod: str | None = None
    webhookURL: str | None = None
    uploadEndpoint: str | None = None


# --------------------------------------------------------------------------- typed tasks


class Authenticate(msgspec.Struct, frozen=True):
    api_key: str
    session_uuid: str | None = None
    task_type: str = "authentication"
    task_uuid: None = None


class Ping(msgspec.Struct, frozen=True):
    task_type: str = "ping"
    task_uuid: None = None


class ImageUpload(msgspec.Struct, frozen=True):
    task_uuid: str
    image: str
    task_type: str = "imageUpload"


class GetResponse(msgspec.Struct, frozen=True):
    task_uuid: str
    task_type: str = "getResponse"


class BackgroundSettings(msgspec.Struct, frozen=True):
    """Defaults are the platform's (and rembg's)."""

    rgba: tuple[int, int, int, int] = (255, 255, 255, 0)
    post_process_mask: bool = False
    return_only_mask: bool = False
    alpha_matting: bool = False
    foreground_threshold: int = 240
    background_threshold: int = 10
    erode_size: int = 10
    # The true foreground colour under soft edges (rembg's decontaminate); None: the task did
    # not say, and the server's default decides.
    decontaminate: bool | None = None


class OutputSpec(msgspec.Struct, frozen=True):
    type: OutputType = "URL"
    format: OutputFormat = "JPG"
    quality: int = 95
    ttl: int | None = None


class RemoveBackground(msgspec.Struct, frozen=True):
    task_uuid: str
    task_type: str
    model: str
    image: str
    image_parameter: str  # "inputs.image" or "inputImage": how errors name the input
    settings: BackgroundSettings
    output: OutputSpec
    include_cost: bool = False
    delivery_method: DeliveryMethod = "sync"
    webhook_url: str | None = None
    upload_endpoint: str | None = None


Task = Authenticate | Ping | ImageUpload | GetResponse | RemoveBackground


# --------------------------------------------------------------------------- results


class AuthenticationResult(msgspec.Struct):
    """Never carries a taskUUID (the JS SDK would no longer recognise it)."""

    taskType: str
    connectionSessionUUID: str


class PongResult(msgspec.Struct):
    """Always alone, first in its frame's data array."""

    taskType: str
    pong: bool


class ImageUploadResult(msgspec.Struct, omit_defaults=True):
    taskType: str
    taskUUID: str
    imageUUID: str
    imageURL: str
    status: str | None = None  # only in getResponse replies


class TaskAcknowledgement(msgspec.Struct):
    """Sent at once for async and webhook deliveries: the task was accepted."""

    taskType: str
    taskUUID: str


class TaskStatusItem(msgspec.Struct):
    """A getResponse reply for a task still running."""

    taskType: str
    taskUUID: str
    status: str


class BackgroundRemovalResult(msgspec.Struct, omit_defaults=True):
    """One cutout: imageURL, imageDataURI or imageBase64Data per the task's outputType."""

    taskType: str
    taskUUID: str
    imageUUID: str
    inputImageUUID: str
    imageURL: str | None = None
    imageBase64Data: str | None = None
    imageDataURI: str | None = None
    cost: float | None = None
    status: str | None = None


class DataFrame(msgspec.Struct):
    data: list[Any]


class ErrorsFrame(msgspec.Struct):
    errors: list[Any]


class AnswerItem(msgspec.Struct, omit_defaults=True):
    """A client's view of one element of ``data``: any result above, its fields optional, so
    that one struct reads every kind of answer (the taskType says which)."""

    taskType: str
    taskUUID: str | None = None
    connectionSessionUUID: str | None = None
    pong: bool | None = None
    status: str | None = None
    imageUUID: str | None = None
    inputImageUUID: str | None = None
    imageURL: str | None = None
    imageBase64Data: str | None = None
    imageDataURI: str | None = None
    cost: float | None = None


class AnswerFrame(msgspec.Struct):
    """A client's view of one frame from the service: results, errors, or both."""

    data: list[AnswerItem] = []
    errors: list[ErrorItem] = []

    def items(self) -> list[AnswerItem | ErrorItem]:
        """Every item of the frame, results first."""
        return [*self.data, *self.errors]


class RestResponse(msgspec.Struct):
    """The REST twin answers a whole array at once: every task's item in one of the two lists."""

    data: list[Any]
    errors: list[Any]


# --------------------------------------------------------------------------- models


class ModelInfo(msgspec.Struct, frozen=True):
    """One model id a service serves: ``GET /v1/models``."""

    model: str  # the id tasks name in their ``model`` field
    family: str  # how images are read for it (docs/models.md, "Families")
    fileName: str
    inputSize: int  # the square the image is resized to
    provider: str  # the execution provider: CUDAExecutionProvider, OpenVINO CPU, ...
    # True where the embedded u2netp serves runware:109@1 because no RMBG-1.4 file was given
    standIn: bool


class ModelList(msgspec.Struct):
    data: list[ModelInfo]


# --------------------------------------------------------------------------- rembg's HTTP API


class RembgRemoveParameters(msgspec.Struct, kw_only=True):
    """The parameters of ``/api/remove``, as rembg 2.0.86's server (``rembg s``) names them:
    query parameters of a GET; form fields of a POST, where ``bgc`` and ``extras`` may also
    be in the query string, as rembg reads them."""

    url: Annotated[str | None, Meta(description="GET: the image to fetch (http or https)")] = None
    model: Annotated[
        str | None,
        Meta(description="a model id served here (GET /v1/models); default: the service's default"),
    ] = None
    a: Annotated[bool, Meta(description="alpha matting")] = False
    af: Annotated[Threshold, Meta(description="alpha matting: foreground threshold")] = 240
    ab: Annotated[Threshold, Meta(description="alpha matting: background threshold")] = 10
    ae: Annotated[Threshold, Meta(description="alpha matting: erosion size")] = 10
    om: Annotated[bool, Meta(description="only the mask")] = False
    ppm: Annotated[bool, Meta(description="post-process the mask")] = False
    dc: Annotated[
        bool, Meta(description="decontaminate: the foreground colour under soft edges")
    ] = False
    vm: Annotated[
        bool, Meta(description="rembg's ViTMatte refinement: refused when true (not served)")
    ] = False
    bgc: Annotated[str | None, Meta(description="background colour R,G,B (opaque) or R,G,B,A")] = (
        None
    )
    extras: Annotated[
        str | None, Meta(description="rembg's session options as JSON: accepted and ignored")
    ] = None


class RembgParameterError(msgspec.Struct):
    """One parameter refused, in FastAPI's shape."""

    loc: list[str]  # ["query" or "body", the parameter's name]
    msg: str
    type: str


class RembgError(msgspec.Struct):
    """An error of ``/api/remove``, as rembg's server (FastAPI) answers them."""

    detail: str | list[RembgParameterError]


REQUEST_TYPES = (
    AuthenticationRequest,
    PingRequest,
    ImageUploadRequest,
    GetResponseRequest,
    RemoveBackgroundRequest,
)
RESULT_TYPES = (
    AuthenticationResult,
    PongResult,
    ImageUploadResult,
    BackgroundRemovalResult,
    TaskAcknowledgement,
    TaskStatusItem,
)
