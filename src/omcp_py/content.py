"""Tool results that carry more than their structured part: figures as images, and a
downloaded file as an image or an embedded resource.

The structured result keeps its schema (``structuredContent``); its JSON is the first
content block, as for every other tool, and the images or the file follow it.
"""

import base64

from mcp.types import (
    BlobResourceContents,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    TextContent,
)
from pydantic import BaseModel
from pydantic_core import to_json

from omcp_py.config import format_size
from omcp_py.files import Download
from omcp_py.models import ExecutionResult
from omcp_py.sandbox_manager import Execution


def with_blocks(result: BaseModel, blocks: list[ContentBlock]) -> CallToolResult:
    """``result`` as structured content and as JSON text, then ``blocks``."""
    text = TextContent(type="text", text=to_json(result, indent=2).decode())
    return CallToolResult(
        content=[text, *blocks], structured_content=result.model_dump(mode="json")
    )


def execution(outcome: Execution, limit: int | None = None) -> CallToolResult:
    """An execution's result, and each of its figures as an image.

    Args:
        outcome: the result and its figures.
        limit: bytes the whole result may take as JSON (MAX_RESULT_SIZE); output past
            it is cut, head and tail kept, whatever it holds (escapes count).
    """
    images: list[ContentBlock] = [
        ImageContent(type="image", data=figure.data, mime_type=figure.mime_type)
        for figure in outcome.figures
    ]
    built = with_blocks(outcome.result, images)
    if limit is None:
        return built
    room = limit - 1024  # the JSON-RPC envelope around the result
    return built if _size(built) <= room else _fitted(outcome.result, images, room, limit)


# Said when output is cut to fit a result; the notices of the result stay after it.
_CUT_NOTICE = (
    "[omcp_py] Output cut to keep the result under MAX_RESULT_SIZE={limit}: write large "
    "output to a file and get it with download_file."
)
_NOTICES = "\n[omcp_py] "


def _size(result: CallToolResult) -> int:
    return len(result.model_dump_json(by_alias=True, exclude_none=True))


def _cut(text: str, keep: int, what: str) -> str:
    """Head and tail of ``text``, ``keep`` characters in all, the middle said left out."""
    if len(text) <= keep:
        return text
    head = keep // 2
    dropped = len(text) - keep
    return (
        f"{text[:head]}\n[... {dropped:,} characters of {what} left out to fit the result "
        f"...]\n{text[len(text) - (keep - head) :]}"
    )


def _fitted(
    result: ExecutionResult, images: list[ContentBlock], room: int, limit: int
) -> CallToolResult:
    output, error = result.output, result.error or ""
    at = error.find(_NOTICES)
    stderr, notices = (error[:at], error[at:]) if at >= 0 else (error, "")
    notices += "\n" + _CUT_NOTICE.format(limit=format_size(limit))

    def build(fraction: float) -> CallToolResult:
        cut = result.model_copy(
            update={
                "output": _cut(output, int(len(output) * fraction), "stdout"),
                "error": (_cut(stderr, int(len(stderr) * fraction), "stderr") + notices).lstrip(
                    "\n"
                ),
                "truncated": True,
            }
        )
        return with_blocks(cut, images)

    empty = _size(build(0.0))
    full = _size(build(1.0))
    fraction = max(0.0, (room - empty) / max(1, full - empty)) * 0.95
    for _ in range(8):
        fitted = build(fraction)
        if _size(fitted) <= room or fraction == 0.0:
            return fitted
        fraction = fraction * 0.8 if fraction > 1e-4 else 0.0
    return build(0.0)


def download(got: Download) -> CallToolResult:
    """A downloaded file: text is in the result itself; an image or other bytes follow it.

    Text goes once in the structured result and once as a plain text block after the
    JSON of the rest: not escaped twice inside the JSON text (a file of newlines and
    quotes would double in size).
    """
    result = got.result
    if result.kind == "text":
        summary = TextContent(
            type="text", text=to_json(result, indent=2, exclude={"text"}).decode()
        )
        return CallToolResult(
            content=[summary, TextContent(type="text", text=result.text or "")],
            structured_content=result.model_dump(mode="json"),
        )
    data = base64.b64encode(got.data).decode("ascii")
    if result.kind == "image":
        block: ContentBlock = ImageContent(type="image", data=data, mime_type=result.mime_type)
    else:
        resource = BlobResourceContents(
            uri=f"file://{result.path}", mime_type=result.mime_type, blob=data
        )
        block = EmbeddedResource(type="resource", resource=resource)
    return with_blocks(result, [block])
