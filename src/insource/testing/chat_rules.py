"""Chat rules: request validation with OpenAI's error messages, params and codes (400
invalid_request_error), and how the fake turns a responder's text into choices (tools, JSON modes, max tokens)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from insource.testing import wire

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
TOOL_CHOICES = ("none", "auto", "required")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")


class InvalidRequest(Exception):
    """A 400 invalid_request_error with OpenAI's body shape."""

    status = 400

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return wire.openai_error(self.message, "invalid_request_error", self.param, self.code)


def _missing(param: str) -> InvalidRequest:
    return InvalidRequest(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer"}
    return names.get(type(value), "null" if value is None else "a number")


def _check_int(body: dict[str, Any], name: str, low: int, high: int) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(
            f"Invalid type for '{name}': expected an integer, but got {_type_name(value)} instead.",
            name,
            "invalid_type",
        )
    if value < low:
        msg = f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {value} instead."
        raise InvalidRequest(msg, name, "integer_below_min_value")
    if value > high:
        msg = f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {value} instead."
        raise InvalidRequest(msg, name, "integer_above_max_value")


def _check_model(body: dict[str, Any], require_model: bool) -> None:
    model = body.get("model")
    if require_model and (not isinstance(model, str) or not model):
        raise InvalidRequest("you must provide a model parameter")


def _check_messages(messages: Any) -> None:
    if messages is None:
        raise _missing("messages")
    if not isinstance(messages, list):
        msg = f"Invalid type for 'messages': expected an array, but got {_type_name(messages)} instead."
        raise InvalidRequest(msg, "messages", "invalid_type")
    if not messages:
        msg = (
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead."
        )
        raise InvalidRequest(msg, "messages", "empty_array")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            msg = f"Invalid type for 'messages[{i}]': expected an object, but got {_type_name(message)} instead."
            raise InvalidRequest(msg, f"messages[{i}]", "invalid_type")
        role = message.get("role")
        if role is None:
            raise _missing(f"messages[{i}].role")
        if role not in ROLES:
            supported = ", ".join(f"'{r}'" for r in ROLES)
            msg = f"Invalid value: '{role}'. Supported values are: {supported}."
            raise InvalidRequest(msg, f"messages[{i}].role", "invalid_value")


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidRequest("Invalid type for 'tools': expected an array.", "tools", "invalid_type")
    names: list[str] = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type") != "function":
            raise _missing(f"tools[{i}].function")
        if not isinstance(fn.get("name"), str):
            raise _missing(f"tools[{i}].function.name")
        names.append(fn["name"])
    choice = body.get("tool_choice")
    if choice is None or choice in TOOL_CHOICES:
        return
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str):
        raise InvalidRequest("Invalid value for 'tool_choice'.", "tool_choice", "invalid_value")
    if name not in names:
        msg = f"Invalid value for 'tool_choice': tool '{name}' is not in the tools list."
        raise InvalidRequest(msg, "tool_choice", "invalid_value")


def _check_response_format(body: dict[str, Any]) -> None:
    fmt = body.get("response_format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in RESPONSE_FORMATS:
        supported = ", ".join(f"'{r}'" for r in RESPONSE_FORMATS)
        msg = f"Invalid value: '{kind}'. Supported values are: {supported}."
        raise InvalidRequest(msg, "response_format.type", "invalid_value")
    if kind == "json_schema" and not isinstance(fmt.get("json_schema"), dict):
        raise _missing("response_format.json_schema")
    if kind == "json_object":
        texts = (wire.content_text(m.get("content"))[0] for m in body["messages"])
        if not any("json" in t.lower() for t in texts):
            msg = (
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'."
            )
            raise InvalidRequest(msg, "messages")


def validate_chat(body: dict[str, Any], require_model: bool) -> None:
    """Raise InvalidRequest if the chat completion body would be rejected by OpenAI."""
    _check_model(body, require_model)
    _check_messages(body.get("messages"))
    _check_int(body, "n", 1, 128)
    _check_int(body, "max_tokens", 1, 1_000_000)
    _check_int(body, "max_completion_tokens", 1, 1_000_000)
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        msg = f"Invalid type for 'stream': expected a boolean, but got {_type_name(stream)} instead."
        raise InvalidRequest(msg, "stream", "invalid_type")
    options = body.get("stream_options")
    if options is not None and not stream:
        msg = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        raise InvalidRequest(msg, "stream_options")
    _check_tools(body)
    _check_response_format(body)


def validate_embeddings(body: dict[str, Any], require_model: bool) -> None:
    """Raise InvalidRequest if the embeddings body would be rejected by OpenAI."""
    _check_model(body, require_model)
    raw = body.get("input")
    if raw is None:
        raise _missing("input")
    ok_list = isinstance(raw, list) and raw and all(isinstance(i, (str, int, list)) for i in raw)
    if raw == "" or not (isinstance(raw, str) or ok_list) or (isinstance(raw, list) and "" in raw):
        msg = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."
        raise InvalidRequest(msg)
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        msg = f"Invalid value: '{fmt}'. Supported values are: 'float' and 'base64'."
        raise InvalidRequest(msg, "encoding_format", "invalid_value")
    _check_int(body, "dimensions", 1, 4096)


def make_choices(text: str, body: dict[str, Any]) -> list[wire.Choice]:
    """The `n` choices for a validated chat body, given the responder's text."""
    n = int(body.get("n") or 1)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    tool = _pick_tool(body)
    choices: list[wire.Choice] = []
    for i in range(n):
        if tool is not None:
            name, params = tool
            args = text if _is_json_object(text) else orjson.dumps(wire.example_from_schema(params, text)).decode()
            args, cut = wire.truncate(args, max_tokens)
            call_id = f"call_{uuid.uuid4().hex[:24]}"
            finish = "length" if cut else "tool_calls"
            choices.append(wire.Choice(i, None, finish, name, args, call_id))
        else:
            content, cut = wire.truncate(_shape_content(text, body.get("response_format")), max_tokens)
            choices.append(wire.Choice(i, content, "length" if cut else "stop"))
    return choices


def _pick_tool(body: dict[str, Any]) -> tuple[str, Any] | None:
    """(name, parameters schema) of the tool to call, or None to answer in text."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    by_name = {t["function"]["name"]: t["function"].get("parameters", {}) for t in tools}
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        return name, by_name[name]
    if choice != "required" and body["messages"][-1].get("role") == "tool":
        return None  # a tool result came back: answer it in text, as a model would
    first = tools[0]["function"]
    return first["name"], first.get("parameters", {})


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        return False


def _shape_content(text: str, response_format: Any) -> str:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return text if _is_json_object(text) else orjson.dumps({"response": text}).decode()
    if kind == "json_schema":
        if _is_json_object(text):
            return text
        schema = (response_format.get("json_schema") or {}).get("schema", {})
        return orjson.dumps(wire.example_from_schema(schema, text)).decode()
    return text
