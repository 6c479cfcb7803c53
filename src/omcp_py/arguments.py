"""Tool arguments: validated strictly, refused in one plain line.

The SDK's argument models ignore unknown keys (a misspelt ``timout`` would pass and
the default apply) and read loosely (``"30"`` as 30, ``true`` as 1 second); its
errors are pydantic's multi-line dumps with a link. Here every tool's model forbids
unknown keys and reads strictly, and a refusal names each argument, what is allowed
and what was given, in one line the model can act on. Pure: no Docker, no MCP I/O.
"""

from typing import Any

from pydantic import ConfigDict, ValidationError

_TYPES = {
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
}
_BOUNDS = {
    "greater_than_equal": ("ge", "must be at least {}"),
    "greater_than": ("gt", "must be more than {}"),
    "less_than_equal": ("le", "must be at most {}"),
    "less_than": ("lt", "must be less than {}"),
    "string_too_short": ("min_length", "must be at least {} characters long"),
    "string_too_long": ("max_length", "must be at most {} characters long"),
}


def strict_model(loose: type) -> type:
    """The SDK's argument model for a tool, made strict and closed to unknown keys."""
    return type(
        loose.__name__,
        (loose,),
        {"model_config": ConfigDict(**loose.model_config, extra="forbid", strict=True)},
    )


def _given(value: Any) -> str:
    if isinstance(value, bool):
        return "got " + str(value).lower()
    if value is None:
        return "got null"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "..."
        return f"got the string {shown!r}"
    if isinstance(value, int | float):
        return f"got {value!r}"
    return "got a list" if isinstance(value, list) else "got an object"


def _part(part: Any) -> str:
    # A key is the caller's text: a plain name as it is, anything else quoted (a newline
    # would break the one line, and a long one would flood it).
    text = str(part)
    if text.isidentifier() or isinstance(part, int):
        return text if len(text) <= 64 else text[:64] + "..."
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _one(error: dict[str, Any], accepted: list[str]) -> str:
    kind = error.get("type", "")
    name = ".".join(_part(part) for part in error.get("loc", ())) or "the arguments"
    given = _given(error.get("input"))
    if kind == "missing":
        return f"{name} is required"
    if kind == "extra_forbidden":
        return f"{name} is not an argument of this tool (it takes {', '.join(accepted)})"
    if kind in _TYPES:
        return f"{name} {_TYPES[kind]} ({given})"
    if kind in _BOUNDS:
        key, text = _BOUNDS[kind]
        bound = (error.get("ctx") or {}).get(key)
        return f"{name} {text.format(bound)} ({given})"
    if kind == "literal_error":
        expected = (error.get("ctx") or {}).get("expected", "")
        return f"{name} must be one of {expected} ({given})"
    message = " ".join(str(error.get("msg", "is not valid")).removeprefix("Value error, ").split())
    return f"{name}: {message} ({given})"


def plain_error(tool: str, exc: ValidationError, accepted: list[str]) -> str:
    """One line for a tool's refused arguments.

    Args:
        tool: the tool's name.
        exc: pydantic's error for its arguments.
        accepted: the names of the arguments the tool takes.
    """
    parts = [_one(error, accepted) for error in exc.errors()]
    # The SDK's prefix, as every other tool error has it.
    return f"Error executing tool {tool}: invalid arguments: {'; '.join(parts)}."
