"""Bytes in, typed tasks out; typed results in, bytes out. Pure: no I/O, never raises.

``decode_frame`` turns one client frame into the tasks it holds and one error item for each task
that cannot run (with its ``taskUUID`` whenever the client sent one, so that SDKs can route it).
A task's siblings are unaffected by its error. ``decode_answer_frame`` is the client's side:
a frame from the service, read as ``AnswerFrame``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from msgspec import inspect as mi

from .errors import Code, ErrorItem, TaskFailure
from .messages import (
    DEFAULT_MODEL,
    OUTPUT_FORMATS,
    OUTPUT_TYPES,
    AnswerFrame,
    Authenticate,
    AuthenticationRequest,
    BackgroundSettings,
    DataFrame,
    DeliveryMethod,
    ErrorsFrame,
    GetResponse,
    GetResponseRequest,
    ImageUpload,
    ImageUploadRequest,
    OutputFormat,
    OutputSpec,
    OutputType,
    Ping,
    PingRequest,
    RemoveBackground,
    RemoveBackgroundRequest,
    RestResponse,
    Task,
)

__all__ = [
    "DecodedFrame",
    "decode_frame",
    "decode_leading_task",
    "decode_answer_frame",
    "encode_data",
    "encode_errors",
    "encode_answer",
    "encode_rest_response",
    "TASK_TYPES",
]


class DecodedFrame(msgspec.Struct):
    tasks: list[Task]
    errors: list[ErrorItem]


class _Header(msgspec.Struct):
    """Just enough of a task to route it and to address an error to it."""

    taskType: Any = None
    taskUUID: Any = None


_frame_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_header_decoder = msgspec.json.Decoder(_Header)
_encoder = msgspec.json.Encoder()


def encode_data(items: list[Any]) -> bytes:
    """``{"data": [...]}``"""
    return _encoder.encode(DataFrame(data=items))


def encode_errors(items: list[ErrorItem]) -> bytes:
    """``{"errors": [...]}``"""
    return _encoder.encode(ErrorsFrame(errors=items))


def encode_answer(item: Any) -> bytes:
    """One task's answer as the frame it travels in: ``errors`` for an ErrorItem, else ``data``."""
    return encode_errors([item]) if isinstance(item, ErrorItem) else encode_data([item])


def encode_rest_response(data: list[Any], errors: list[ErrorItem]) -> bytes:
    """``{"data": [...], "errors": [...]}``: the REST twin's answer to a whole array of tasks."""
    return _encoder.encode(RestResponse(data=data, errors=errors))


# --------------------------------------------------------------------------- validation errors

_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING_FIELD = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")
_INDEX = re.compile(r"\[\d+\]")


def _json_type(t: mi.Type) -> tuple[str, dict[str, int | float]]:
    """The JSON type name of a msgspec type, and its numeric bounds if it has any."""
    if isinstance(t, mi.UnionType):
        # Optional fields: describe the non-null member(s).
        members = [m for m in t.types if not isinstance(m, mi.NoneType)]
        described = [_json_type(m) for m in members]
        names = " or ".join(dict.fromkeys(name for name, _ in described))
        bounds = described[0][1] if len(described) == 1 else {}
        return names, bounds
    if isinstance(t, mi.IntType):
        bounds = {k: v for k, v in (("min", t.ge), ("max", t.le)) if v is not None}
        return "integer", bounds
    if isinstance(t, mi.FloatType):
        return "number", {}
    if isinstance(t, mi.BoolType):
        return "boolean", {}
    if isinstance(t, mi.StrType):
        return "string", {}
    if isinstance(t, (mi.ListType, mi.TupleType)):
        return "array", {}
    if isinstance(t, (mi.StructType, mi.DictType)):
        return "object", {}
    return "value", {}


def _field_type(struct: type, parameter: str) -> mi.Type | None:
    """Follow a dotted parameter path through nested structs to the type of its last field."""
    t: mi.Type = mi.type_info(struct)
    for name in parameter.split("."):
        if isinstance(t, mi.UnionType):
            t = next((m for m in t.types if isinstance(m, mi.StructType)), t)
        if not isinstance(t, mi.StructType):
            return None
        field = next((f for f in t.fields if f.encode_name == name), None)
        if field is None:
            return None
        t = field.type
    return t


def _failure_from_validation(struct: type, error: msgspec.ValidationError) -> TaskFailure:
    text = str(error)
    at = _AT_PATH.search(text)
    path = _INDEX.sub("", at.group("path")).lstrip(".") if at else ""
    # "Expected `bool | null`": every field is optional, so null is never what the client lacked.
    detail = (text[: at.start()] if at else text).replace(" | null", "")
    missing = _MISSING_FIELD.match(detail)
    if missing:
        parameter = f"{path}.{missing.group('field')}" if path else missing.group("field")
        field_type = _field_type(struct, parameter)
        return TaskFailure.missing(parameter, _json_type(field_type)[0] if field_type else "value")
    if not path:
        return TaskFailure(Code.INVALID_TASK, f"Invalid task: {detail}.", type="object")
    field_type = _field_type(struct, path)
    type_name, bounds = _json_type(field_type) if field_type else ("value", {})
    return TaskFailure.invalid(path, type_name, detail + ".", **bounds)


def _decode_struct(raw: msgspec.Raw, struct: type) -> Any:
    try:
        return msgspec.json.decode(raw, type=struct)
    except msgspec.ValidationError as error:
        raise _failure_from_validation(struct, error) from None


# --------------------------------------------------------------------------- per task type


def _authentication(raw: msgspec.Raw, task_type: str) -> Task:
    request = _decode_struct(raw, AuthenticationRequest)
    return Authenticate(api_key=request.apiKey, session_uuid=request.connectionSessionUUID)


def _ping(raw: msgspec.Raw, task_type: str) -> Task:
    _decode_struct(raw, PingRequest)
    return Ping()


def _image_upload(raw: msgspec.Raw, task_type: str) -> Task:
    request = _decode_struct(raw, ImageUploadRequest)
    if not request.image:
        raise TaskFailure.missing("image", "string")
    return ImageUpload(task_uuid=request.taskUUID, image=request.image)


def _get_response(raw: msgspec.Raw, task_type: str) -> Task:
    request = _decode_struct(raw, GetResponseRequest)
    return GetResponse(task_uuid=request.taskUUID)


_SETTING_NAMES = (
    ("rgba", "rgba"),
    ("postProcessMask", "post_process_mask"),
    ("returnOnlyMask", "return_only_mask"),
    ("alphaMatting", "alpha_matting"),
    ("alphaMattingForegroundThreshold", "foreground_threshold"),
    ("alphaMattingBackgroundThreshold", "background_threshold"),
    ("alphaMattingErodeSize", "erode_size"),
    ("decontaminate", "decontaminate"),
)
_OUTPUT_TYPE_BY_FOLDED: dict[str, OutputType] = {name.lower(): name for name in OUTPUT_TYPES}
_OUTPUT_FORMAT_BY_FOLDED: dict[str, OutputFormat] = {
    name.lower(): name for name in OUTPUT_FORMATS
} | {"jpeg": "JPG"}
_DELIVERY_METHODS: dict[str, DeliveryMethod] = {"sync": "sync", "async": "async"}


def _settings(request: RemoveBackgroundRequest) -> BackgroundSettings:
    """Nested ``settings`` win over the flat top-level spelling of the same field."""
    values: dict[str, Any] = {}
    for wire_name, name in _SETTING_NAMES:
        nested = getattr(request.settings, wire_name) if request.settings else None
        value = nested if nested is not None else getattr(request, wire_name)
        if value is not None:
            values[name] = tuple(value) if wire_name == "rgba" else value
    return BackgroundSettings(**values)


Choice = TypeVar("Choice", bound=str)


def _choice(
    value: str | None, by_folded: dict[str, Choice], parameter: str, default: Choice
) -> Choice:
    if value is None:
        return default
    chosen = by_folded.get(value.lower())
    if chosen is None:
        allowed = ", ".join(dict.fromkeys(by_folded.values()))
        raise TaskFailure.invalid(parameter, "string", f"Expected one of {allowed}, got {value!r}.")
    return chosen


def _remove_background(raw: msgspec.Raw, task_type: str) -> Task:
    request: RemoveBackgroundRequest = _decode_struct(raw, RemoveBackgroundRequest)
    if request.inputs is not None and request.inputs.image is not None:
        image, parameter = request.inputs.image, "inputs.image"
    elif request.inputImage is not None:
        image, parameter = request.inputImage, "inputImage"
    else:
        modern = request.inputs is not None or (
            task_type == "removeBackground" and request.settings
        )
        raise TaskFailure.missing("inputs.image" if modern else "inputImage", "string")
    if not image.strip():
        raise TaskFailure.invalid(parameter, "string", "The image must not be empty.")
    delivery = _choice(request.deliveryMethod, _DELIVERY_METHODS, "deliveryMethod", "sync")
    output = OutputSpec(
        type=_choice(request.outputType, _OUTPUT_TYPE_BY_FOLDED, "outputType", "URL"),
        format=_choice(request.outputFormat, _OUTPUT_FORMAT_BY_FOLDED, "outputFormat", "JPG"),
        quality=request.outputQuality if request.outputQuality is not None else 95,
        ttl=request.ttl,
    )
    model = DEFAULT_MODEL if request.model is None else str(request.model)
    if not model:
        raise TaskFailure.invalid("model", "string", "The model must not be empty.")
    return RemoveBackground(
        task_uuid=request.taskUUID,
        task_type=task_type,
        model=model,
        image=image,
        image_parameter=parameter,
        settings=_settings(request),
        output=output,
        include_cost=bool(request.includeCost),
        delivery_method=delivery,
        webhook_url=request.webhookURL,
        upload_endpoint=request.uploadEndpoint,
    )


TASK_TYPES: dict[str, Callable[[msgspec.Raw, str], Task]] = {
    "authentication": _authentication,
    "ping": _ping,
    "imageUpload": _image_upload,
    "getResponse": _get_response,
    "removeBackground": _remove_background,
    "imageBackgroundRemoval": _remove_background,
}


# --------------------------------------------------------------------------- frames


def _frame_error(data: bytes | str) -> DecodedFrame:
    """The frame is not a JSON array: say whether it is JSON at all, and route it if we can."""
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError as error:
        item = ErrorItem(code=Code.INVALID_JSON, message=f"The frame is not valid JSON: {error}.")
        return DecodedFrame(tasks=[], errors=[item])
    item = ErrorItem(
        code=Code.INVALID_FRAME,
        message="A frame must be a JSON array of task objects.",
        type="array",
    )
    if isinstance(value, dict):
        # A lone task object: tell its sender which task was refused.
        task_uuid, task_type = value.get("taskUUID"), value.get("taskType")
        item.taskUUID = task_uuid if isinstance(task_uuid, str) else None
        item.taskType = task_type if isinstance(task_type, str) else None
    return DecodedFrame(tasks=[], errors=[item])


def _decode_task(raw: msgspec.Raw, index: int) -> Task | ErrorItem:
    try:
        header = _header_decoder.decode(raw)
    except msgspec.DecodeError:
        return ErrorItem(
            code=Code.INVALID_TASK,
            message=f"Element {index} of the frame is not a task object.",
            type="object",
        )
    task_type = header.taskType if isinstance(header.taskType, str) else None
    task_uuid = header.taskUUID if isinstance(header.taskUUID, str) else None
    try:
        if header.taskType is None:
            raise TaskFailure.missing("taskType", "string")
        decoder = TASK_TYPES.get(task_type) if task_type is not None else None
        if decoder is None or task_type is None:
            raise TaskFailure(
                Code.UNSUPPORTED_TASK_TYPE,
                f"Unsupported taskType {header.taskType!r}. Supported: "
                + ", ".join(TASK_TYPES)
                + ".",
                parameter="taskType",
                type="string",
            )
        return decoder(raw, task_type)
    except TaskFailure as failure:
        return failure.item(task_type, task_uuid)


def _too_deep() -> DecodedFrame:
    item = ErrorItem(code=Code.INVALID_JSON, message="The frame is nested too deeply to read.")
    return DecodedFrame(tasks=[], errors=[item])


# A JSON string (escapes included), or a character that opens, closes or separates.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},]')


def _leading_element(prefix: bytes) -> bytes | None:
    """The first element of the JSON array that ``prefix`` begins, once ``prefix`` holds it
    whole; b"" when ``prefix`` does not begin an array; None while more bytes are needed."""
    text = prefix.lstrip()
    if not text:
        return None
    if not text.startswith(b"["):
        return b""
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
        elif token in (b"]", b"}"):
            depth -= 1
            if depth == 0:  # the array closed: its first element, if any, ended before
                return text[1 : match.start()]
            if depth == 1:
                return text[1 : match.end()]
        elif token == b"," and depth == 1:
            return text[1 : match.start()]
    return None


def decode_leading_task(prefix: bytes) -> Task | ErrorItem | None:
    """The first task of a frame from the frame's first bytes, before the rest has arrived
    (a request's authentication element, checked before its body is read); None while
    ``prefix`` ends inside it."""
    element = _leading_element(prefix)
    if element is None:
        return None
    return _decode_task(msgspec.Raw(element), 0)


def decode_frame(data: bytes | str, max_elements: int | None = None) -> DecodedFrame:
    """Decode one client frame. Never raises: every problem becomes an error item.

    Only the first ``max_elements`` elements are read (None: all); one ``tooManyTasks`` item
    covers the rest, however many there are.
    """
    try:
        raws = _frame_decoder.decode(data)
    except msgspec.DecodeError:
        try:
            return _frame_error(data)
        except RecursionError:
            return _too_deep()
    except RecursionError:
        return _too_deep()
    frame = DecodedFrame(tasks=[], errors=[])
    for index, raw in enumerate(raws[:max_elements]):
        decoded = _decode_task(raw, index)
        if isinstance(decoded, ErrorItem):
            frame.errors.append(decoded)
        else:
            frame.tasks.append(decoded)
    if max_elements is not None and len(raws) > max_elements:
        frame.errors.append(
            ErrorItem(
                code=Code.TOO_MANY_TASKS,
                message=f"{len(raws) - max_elements} elements past the first {max_elements} "
                f"were not read: at most {max_elements} tasks are accepted per frame.",
                max=max_elements,
            )
        )
    return frame


_answer_decoder = msgspec.json.Decoder(AnswerFrame)


def decode_answer_frame(data: bytes | str) -> AnswerFrame:
    """A frame from the service as a client reads it. Unlike the decoders of client frames this
    one raises (msgspec.DecodeError): an answer that is not one is the service's bug."""
    return _answer_decoder.decode(data)
