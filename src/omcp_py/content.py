"""The results of the two tools that carry media: a run (output and figures) and a
downloaded file (text, an image or other bytes).

Their shape is chosen for every client at once (docs/api-reference.md, "Result shapes"):
no ``structuredContent`` — Claude Code, Codex and opencode show the model only that
field when it is there, dropping every image — and each payload exactly once:

- a summary block: JSON of the small fields (exit code, state, figures, ...);
- ``stdout:`` and ``stderr:`` blocks, each a label line then the text as it was written
  (left out when empty), or the downloaded text itself;
- then the images, or the file as an image or an embedded resource.

Each result fits MAX_RESULT_SIZE as it goes on the wire (escapes and base64 counted).
"""

import base64

from mcp.types import (
    BlobResourceContents,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
)
from pydantic import BaseModel
from pydantic_core import to_json

from omcp_py.config import format_size
from omcp_py.errors import FileRefused
from omcp_py.files import Download
from omcp_py.models import DownloadResult, ExecutionResult, ExportResult
from omcp_py.sandboxes import Execution

# The label lines of the output blocks; a reader splits a block at its first newline.
STDOUT, STDERR = "stdout:", "stderr:"
# Room for the JSON-RPC envelope around a result.
ENVELOPE = 1024
# For each tool answered here: the model of its summary, and the fields that travel in
# blocks of their own instead (docs/api-reference.md is generated from this).
SUMMARIES: dict[str, tuple[type[BaseModel], set[str]]] = {
    "execute_python_code": (ExecutionResult, {"output", "error"}),
    "download_file": (DownloadResult, {"text"}),
    "export_file": (ExportResult, set()),
}


def _summary(result: BaseModel, payload: set[str]) -> TextContent:
    return TextContent(type="text", text=to_json(result, indent=2, exclude=payload).decode())


def _text(text: str) -> TextContent:
    return TextContent(type="text", text=text)


def _size(result: CallToolResult) -> int:
    return len(result.model_dump_json(by_alias=True, exclude_none=True))


def run_blocks(result: ExecutionResult, images: list[ContentBlock]) -> CallToolResult:
    """A run as its summary, its stdout and stderr (each once, when not empty), then
    its figures."""
    blocks: list[ContentBlock] = [_summary(result, SUMMARIES["execute_python_code"][1])]
    if result.output:
        blocks.append(_text(f"{STDOUT}\n{result.output}"))
    if result.error:
        blocks.append(_text(f"{STDERR}\n{result.error}"))
    return CallToolResult(content=[*blocks, *images])


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
    built = run_blocks(outcome.result, images)
    if limit is None:
        return built
    room = limit - ENVELOPE
    if _surely_fits(outcome.result, images, room) or _size(built) <= room:
        return built
    return _fitted(outcome.result, images, room, limit)


def _surely_fits(result: ExecutionResult, images: list[ContentBlock], room: int) -> bool:
    """True when the result fits whatever its text holds, so that the usual small run
    is not serialised once more just to be measured: a character takes at most six
    bytes as JSON, base64 none more, and the summary and block wrappers stay under 8 KiB
    (at most MAX_FIGURES figures are described)."""
    text = len(result.output) + len(result.error or "")
    data = sum(len(image.data) for image in images if isinstance(image, ImageContent))
    return 6 * text + data + 8 * 1024 <= room


# Said when output is cut to fit a result; the notices of the result stay after it.
_CUT_NOTICE = (
    "[omcp_py] Output cut to keep the result under MAX_RESULT_SIZE={limit}: write large "
    "output to a file and get it with download_file."
)
_NOTICES = "\n[omcp_py] "


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
        return run_blocks(cut, images)

    empty = _size(build(0.0))
    full = _size(build(1.0))
    fraction = max(0.0, (room - empty) / max(1, full - empty)) * 0.95
    for _ in range(8):
        fitted = build(fraction)
        if _size(fitted) <= room or fraction == 0.0:
            return fitted
        fraction = fraction * 0.8 if fraction > 1e-4 else 0.0
    return build(0.0)


def download(got: Download, limit: int | None = None) -> CallToolResult:
    """A downloaded file: its summary, then the text itself, the image, or the bytes as
    an embedded resource.

    Args:
        got: the file's description and bytes.
        limit: bytes the result may take as JSON (MAX_RESULT_SIZE). Text that would
            outgrow it once escaped goes as bytes when those fit.

    Raises:
        FileRefused: the file does not fit one result in any form.
    """
    built = _download_blocks(got.result, got.data)
    if limit is None or _size(built) <= limit - ENVELOPE:
        return built
    if got.result.kind == "text":
        as_bytes = got.result.model_copy(
            update={"kind": "binary", "text": None, "mime_type": "application/octet-stream"}
        )
        built = _download_blocks(as_bytes, got.data)
        if _size(built) <= limit - ENVELOPE:
            return built
    raise FileRefused(
        f"{got.result.path} is {got.result.size:,} bytes; as a result it would take "
        f"{_size(built):,} (base64 or escapes included), over MAX_RESULT_SIZE="
        f"{format_size(limit)}: clients refuse larger results. Make it smaller in the sandbox "
        f"(compress it, or split it and download the parts), or raise MAX_RESULT_SIZE if "
        f"your client accepts more."
    )


def _download_blocks(result: DownloadResult, data: bytes) -> CallToolResult:
    summary = _summary(result, SUMMARIES["download_file"][1])
    if result.kind == "text":
        return CallToolResult(content=[summary, _text(result.text or "")])
    encoded = base64.b64encode(data).decode("ascii")
    if result.kind == "image":
        block: ContentBlock = ImageContent(type="image", data=encoded, mime_type=result.mime_type)
    else:
        resource = BlobResourceContents(
            uri=f"file://{result.path}", mime_type=result.mime_type, blob=encoded
        )
        block = EmbeddedResource(type="resource", resource=resource)
    return CallToolResult(content=[summary, block])


def export(result: ExportResult) -> CallToolResult:
    """A file written to the user's machine: the summary, and a link to it (no bytes)."""
    link = ResourceLink(
        type="resource_link",
        name=result.host_path.rsplit("/", 1)[-1],
        uri=result.uri,
        mime_type=result.mime_type,
        size=result.size,
    )
    return CallToolResult(
        content=[_summary(result, set()), link],
        # Small and without media: a client that keeps only this still has the path.
        structured_content=result.model_dump(),
    )
