"""What comes out of a sandbox is hostile input: the host's checks, before a result.

PID 1 (which the code cannot touch) already parses and bounds everything it passes
on; these checks hold again on the host, so that a runner that misbehaves (or a
future bug in it) cannot crash the server or make a result unbounded. Pure: a unit
test imports it without Docker.
"""

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

# What a run may return as figures: PID 1's own limits, from the one place they live.
from omcp_py.runner.pid1.figures import IMAGE_SIGNATURES, MAX_FIGURES, image_size

_SURROGATE = re.compile("[\ud800-\udfff]")
_BASE64 = re.compile(rb"^[A-Za-z0-9+/]*={0,2}$")


def clean_text(text: str) -> str:
    """``text`` as valid UTF-8: each lone surrogate becomes U+FFFD.

    Python strings can hold surrogates (file names decoded with surrogateescape,
    ``\\ud800`` in JSON); the JSON-RPC writer cannot encode them and would end the
    connection.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def clean(value: Any) -> Any:
    """``value`` with every string in it made valid UTF-8 (models, lists, dicts)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, BaseModel):
        changes = {}
        for name in type(value).model_fields:
            before = getattr(value, name)
            after = clean(before)
            if after is not before:
                changes[name] = after
        return value.model_copy(update=changes) if changes else value
    if isinstance(value, list | tuple):
        items = [clean(item) for item in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items)
    if isinstance(value, dict):
        pairs = {clean(k): clean(v) for k, v in value.items()}
        if all(k in value and value[k] is v for k, v in pairs.items()):
            return value
        return pairs
    return value


@dataclass
class Figure:
    """One figure of a run, checked: a PNG or JPEG, its base64 and its real size."""

    mime_type: str
    data: str  # base64
    width: int
    height: int
    size: int  # bytes, before base64


@dataclass
class CheckedFigures:
    figures: list[Figure] = field(default_factory=list)
    left_out: int = 0
    reasons: list[str] = field(default_factory=list)  # why, one entry per reason

    def drop(self, reason: str, count: int = 1) -> None:
        self.left_out += count
        if reason not in self.reasons:
            self.reasons.append(reason)


def check_figures(images: Any, left_out: Any, budget: int) -> CheckedFigures:
    """The figures a runner reported, held to what a result may carry.

    Args:
        images: the runner's list of ``{"mime", "data"}`` (anything else is dropped).
        left_out: how many the runner says it left out itself.
        budget: base64 bytes the figures may take together.

    Returns:
        At most MAX_FIGURES PNG or JPEG images, strict base64 whose bytes start with
        that format's signature, within the budget; the rest counted with the reason.
    """
    checked = CheckedFigures()
    try:
        checked.left_out = max(0, min(int(left_out or 0), 10**6))
    except (TypeError, ValueError, OverflowError):  # JSON allows Infinity
        checked.left_out = 0
    if not isinstance(images, list):
        if images:
            checked.drop("not a list of figures")
        return checked
    room = budget
    for index, image in enumerate(images):
        if index >= MAX_FIGURES:
            checked.drop(f"more than {MAX_FIGURES} figures in one run", len(images) - index)
            break
        mime = image.get("mime") if isinstance(image, dict) else None
        data = image.get("data") if isinstance(image, dict) else None
        if mime not in IMAGE_SIGNATURES or not isinstance(data, str):
            checked.drop("not a PNG or JPEG image")
            continue
        if len(data) > room:
            checked.drop("over IMAGE_BUDGET")
            continue
        raw = data.encode("ascii", "replace")
        try:
            if len(raw) % 4 or not _BASE64.match(raw):
                raise binascii.Error
            decoded = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            checked.drop("not base64")
            continue
        if not decoded.startswith(IMAGE_SIGNATURES[mime]):
            checked.drop(f"not a {mime.split('/')[1].upper()} image")
            continue
        width, height = image_size(decoded)
        room -= len(data)
        checked.figures.append(Figure(mime, data, width, height, len(decoded)))
    return checked
