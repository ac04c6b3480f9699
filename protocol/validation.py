"""The shape of what a client asks for, checked before any provider code sees it.

msgspec checks a ``generate``'s envelope (its fields and their types); the
OpenAI values inside it (``messages``, ``tools``, ``tool_choice``,
``params.response_format``) are typed ``Any`` there, so that fields this
module does not know still reach the provider. Left unchecked, a malformed
value reaches LiteLLM's request transformation and fails there as an
``AttributeError`` or ``KeyError`` (an ``internal`` error, a traceback), or is
sent upstream silently changed (MessagePack NaN becomes JSON ``null``).

``check_generate`` walks those values once, iteratively (a hostile message
cannot make it recurse), and raises ``BadMessage`` naming the first problem
and its path (``$.messages[0].content[1].image_url``):

- every value is plain JSON: no NaN or infinity, no integer past 64 bits, no
  MessagePack binary or extension value, string keys only, at most
  ``MAX_DEPTH`` levels deep;
- every message has a known ``role`` and the content that role takes: text,
  or a list of typed parts with their required fields; a ``tool`` message its
  ``tool_call_id``; an assistant's ``tool_calls`` their ids and functions;
- every tool is ``{"type": "function", "function": {"name", "parameters"}}``;
- a ``file`` part's ``file_id`` is an id, never a URL: tokenwire does not
  fetch what a client names (LiteLLM would download it to inline it).

Nothing here does I/O; it costs one pass over the message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from .errors import BadMessage
from .messages import Generate

MAX_DEPTH: Final = 64
"""Nesting levels a value inside a ``generate`` may have (a JSON Schema is rarely past 10)."""
QUOTE_CHARS: Final = 64
"""Characters of a client's value an error message quotes at most."""
MESSAGE_CHARS: Final = 300
"""Characters of an error message at most."""

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
_ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_URL_PREFIXES: Final = ("http://", "https://", "www.", "ftp://", "file:", "//")
# Content part types and the object field each requires (None: nothing more).
_PART_FIELDS: Final[Mapping[str, str | None]] = {
    "text": "text",
    "image_url": "image_url",
    "input_audio": "input_audio",
    "file": "file",
    "refusal": "refusal",
    "thinking": None,
    "redacted_thinking": None,
    "document": None,
    "video_url": None,
}
_PARTS_BY_ROLE: Final[Mapping[str, frozenset[str]]] = {
    "system": frozenset({"text"}),
    "developer": frozenset({"text"}),
    "user": frozenset({"text", "image_url", "input_audio", "file", "document", "video_url"}),
    "assistant": frozenset({"text", "refusal", "thinking", "redacted_thinking"}),
    "tool": frozenset({"text", "image_url", "file"}),
    "function": frozenset({"text"}),
}
_PLAIN: Final = frozenset({"system", "developer", "user", "assistant"})
_TOOL_CHOICES: Final = frozenset({"none", "auto", "required"})


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error never echoes a
    whole hostile value back."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"… ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def cap(message: str, limit: int = MESSAGE_CHARS) -> str:
    """An error message cut to ``limit`` characters."""
    return message if len(message) <= limit else message[: limit - 1] + "…"


def check_generate(message: Generate, *, from_json: bool = False) -> None:
    """Raise ``BadMessage`` (with the generation's id) if a value is malformed.

    ``from_json``: the message was decoded from JSON, whose decoder already
    refuses what is not plain JSON (NaN, infinities, binary, extension
    types, keys that are not strings, nesting past its limit), so the values
    are not walked again (a 1 MB message of 55,000 messages costs ≈20 ms
    less)."""
    walk = (lambda value, path: None) if from_json else check_json_values
    try:
        for i, item in enumerate(message.messages):
            # The common message, {"role": "user", "content": "text"}, at a glance.
            if len(item) == 2 and type(item.get("content")) is str and item.get("role") in _PLAIN:
                continue
            walk(item, f"$.messages[{i}]")
            _check_message(item, f"$.messages[{i}]")
        if message.tools is not None:
            walk(message.tools, "$.tools")
            for i, tool in enumerate(message.tools):
                _check_tool(tool, f"$.tools[{i}]")
        if message.tool_choice is not None:
            walk(message.tool_choice, "$.tool_choice")
            _check_tool_choice(message.tool_choice)
        if message.params is not None and not from_json:
            for name in message.params.__struct_fields__:
                value = getattr(message.params, name)
                if value is not None:
                    walk(value, f"$.params.{name}")
    except BadMessage as exc:
        raise BadMessage(exc.message, path=exc.path, generation_id=message.id) from None


def check_json_values(value: Any, path: str) -> None:
    """Raise ``BadMessage`` unless ``value`` is plain, finite JSON within ``MAX_DEPTH``."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str | bool) or item is None:
            continue
        if isinstance(item, int):
            if not _INT_MIN <= item <= _INT_MAX:
                _fail("integer out of range (64 bits at most)", where)
        elif isinstance(item, float):
            if not math.isfinite(item):
                _fail(f"{item} is not a JSON number", where)
        elif isinstance(item, list | tuple | dict):
            if depth >= MAX_DEPTH:
                _fail(f"nested more than {MAX_DEPTH} levels deep", where)
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        _fail(f"object key {quote(key)} is not a string", where)
                    stack.append((child, f"{where}.{key[:QUOTE_CHARS]}", depth + 1))
            else:
                stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))
        else:  # MessagePack bytes, extension types, timestamps
            _fail(f"a {_kind(item)} value is not JSON", where)


def _check_message(message: Any, path: str) -> None:
    if not isinstance(message, dict):
        _fail(f"expected a message object, got {_kind(message)}", path)
    role = message.get("role")
    if role not in _ROLES:
        if role is None:
            _fail("missing required field `role`", path)
        _fail(f"unknown role {quote(role)}; expected one of {', '.join(sorted(_ROLES))}", path)
    content = message.get("content")
    tool_calls = message.get("tool_calls")
    if role == "assistant":
        if tool_calls is not None:
            _check_tool_calls(tool_calls, f"{path}.tool_calls")
    elif "content" not in message:
        _fail("missing required field `content`", path)
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        _fail("a tool message needs `tool_call_id` (a string)", path)
    if (name := message.get("name")) is not None and not isinstance(name, str):
        _fail(f"expected `str`, got {_kind(name)}", f"{path}.name")
    if content is None or isinstance(content, str):
        if content is None and role not in ("assistant", "function"):
            _fail("`content` is null", f"{path}.content")
        return
    if not isinstance(content, list):
        _fail(f"expected a string or a list of parts, got {_kind(content)}", f"{path}.content")
    allowed = _PARTS_BY_ROLE[role]
    for i, part in enumerate(content):
        _check_part(part, f"{path}.content[{i}]", role, allowed)


def _check_part(part: Any, path: str, role: str, allowed: frozenset[str]) -> None:
    if not isinstance(part, dict):
        _fail(f"expected a content part object, got {_kind(part)}", path)
    kind = part.get("type")
    if not isinstance(kind, str):
        _fail("a content part needs `type` (a string)", path)
    if kind not in allowed:
        _fail(f"a {role} message cannot hold a {quote(kind)} part", path)
    field = _PART_FIELDS[kind]
    if field is None:
        return
    value = part.get(field)
    where = f"{path}.{field}"
    if kind in ("text", "refusal"):
        if not isinstance(value, str):
            _fail(f"a {kind} part needs `{field}` (a string)", path)
    elif kind == "image_url":
        url = value.get("url") if isinstance(value, dict) else value
        if not isinstance(url, str) or not url:
            _fail("an image_url part needs `image_url.url` (a string)", path)
        if isinstance(value, dict) and not isinstance(value.get("detail", "auto"), str):
            _fail("expected `str`", f"{where}.detail")
    elif kind == "input_audio":
        if not (
            isinstance(value, dict)
            and isinstance(value.get("data"), str)
            and isinstance(value.get("format"), str)
        ):
            _fail("an input_audio part needs `input_audio.data` and `.format` (strings)", path)
    elif kind == "file":
        if not isinstance(value, dict):
            _fail("a file part needs `file` (an object)", path)
        if not any(isinstance(value.get(k), str) for k in ("file_id", "file_data", "filename")):
            _fail("a file part needs `file.file_id` or `file.file_data`", path)
        file_id = value.get("file_id")
        if isinstance(file_id, str) and file_id.lower().startswith(_URL_PREFIXES):
            _fail(
                "`file_id` is a URL: tokenwire never fetches a URL a client names; "
                "send the file's content as `file_data`",
                f"{where}.file_id",
            )


def _check_tool_calls(calls: Any, path: str) -> None:
    if not isinstance(calls, list):
        _fail(f"expected a list, got {_kind(calls)}", path)
    for i, call in enumerate(calls):
        where = f"{path}[{i}]"
        if not isinstance(call, dict):
            _fail(f"expected a tool call object, got {_kind(call)}", where)
        if not isinstance(call.get("id"), str):
            _fail("a tool call needs `id` (a string)", where)
        function = call.get("function")
        if not (
            isinstance(function, dict)
            and isinstance(function.get("name"), str)
            and isinstance(function.get("arguments"), str)
        ):
            _fail("a tool call needs `function.name` and `function.arguments` (strings)", where)


def _check_tool(tool: Any, path: str) -> None:
    if not isinstance(tool, dict):
        _fail(f"expected a tool object, got {_kind(tool)}", path)
    if tool.get("type") != "function":
        _fail("only tools of `type: function` are supported", f"{path}.type")
    function = tool.get("function")
    if not isinstance(function, dict):
        _fail("a tool needs `function` (an object)", path)
    name = function.get("name")
    if not isinstance(name, str) or not name:
        _fail("a tool needs `function.name` (a non-empty string)", f"{path}.function")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        _fail(
            f"`parameters` must be a JSON Schema object, got {_kind(parameters)}",
            f"{path}.function.parameters",
        )
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        _fail(f"expected `str`, got {_kind(description)}", f"{path}.function.description")


def _check_tool_choice(choice: Any) -> None:
    path = "$.tool_choice"
    if isinstance(choice, str):
        if choice not in _TOOL_CHOICES:
            _fail(f"expected one of none, auto, required, got {quote(choice)}", path)
        return
    function = choice.get("function")
    if choice.get("type") != "function" or not (
        isinstance(function, dict) and isinstance(function.get("name"), str)
    ):
        _fail('expected {"type": "function", "function": {"name": ...}}', path)


def _kind(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _fail(message: str, path: str) -> Any:
    raise BadMessage(f"{message} at {path}", path=path)
