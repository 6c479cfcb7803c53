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

from omcp_py.files import Download
from omcp_py.sandbox_manager import Execution


def with_blocks(result: BaseModel, blocks: list[ContentBlock]) -> CallToolResult:
    """``result`` as structured content and as JSON text, then ``blocks``."""
    text = TextContent(type="text", text=to_json(result, indent=2).decode())
    return CallToolResult(
        content=[text, *blocks], structured_content=result.model_dump(mode="json")
    )


def execution(outcome: Execution) -> CallToolResult:
    """An execution's result, and each of its figures as an image."""
    images: list[ContentBlock] = [
        ImageContent(type="image", data=figure.data, mime_type=figure.mime_type)
        for figure in outcome.figures
    ]
    return with_blocks(outcome.result, images)


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
