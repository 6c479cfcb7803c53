"""Host side of the file tools: argument checks, what the runner's refusals mean, and
what a downloaded file is (image, text or other bytes).

The confinement itself happens in the sandbox (runner/pid1/files.py): a fork that is the
code's user walks the path without following links. What is checked here only makes
the error arrive sooner and say more.
"""

import base64
import binascii
import hashlib
import mimetypes
from dataclasses import dataclass
from typing import Any

from omcp_py.config import SandboxConfig, format_size
from omcp_py.errors import EngineError, FileRefused, InvalidArgument, OmcpError
from omcp_py.models import DownloadResult, FileEntry, ListFilesResult, UploadResult, utc_iso

MAX_PATH = 4096
WHERE = (
    "Use a path relative to /sandbox (the working directory), or an absolute one under "
    "/sandbox or /tmp"
)
_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


@dataclass
class Download:
    """A file got from a sandbox: its description and its bytes."""

    result: DownloadResult
    data: bytes


def check_path(path: str) -> str:
    """The path as the runner gets it.

    Raises:
        FileRefused: empty, too long, or with a NUL byte.
    """
    if not path.strip():
        raise FileRefused(f"path is empty. {WHERE}.")
    if "\x00" in path:
        raise FileRefused(f"path contains a NUL byte. {WHERE}.")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise FileRefused(f"path is longer than {MAX_PATH} bytes.")
    return path


def decode_upload(text: str | None, content_base64: str | None, limit: int) -> bytes:
    """The bytes to upload, from exactly one of ``text`` and ``content_base64``.

    Raises:
        InvalidArgument: neither or both given, bad base64, or over ``limit`` bytes.
    """
    if (text is None) == (content_base64 is None):
        raise InvalidArgument(
            "Give exactly one of text (for text, written as UTF-8) and content_base64 (for "
            "any bytes, base64-encoded)."
        )
    if text is not None:
        try:
            content = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidArgument(
                f"text is not valid Unicode (a lone surrogate at character {exc.start}): send "
                f"binary content as content_base64."
            ) from None
    else:
        assert content_base64 is not None
        if len(content_base64) > (limit + 2) // 3 * 4 + 1024:  # before decoding it all
            raise _too_large_upload(len(content_base64) * 3 // 4, limit)
        try:
            content = base64.b64decode("".join(content_base64.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgument(
                f"content_base64 is not valid base64 ({exc}): encode the bytes with standard "
                f"base64 (A-Z, a-z, 0-9, + and /, with = padding)."
            ) from None
    if len(content) > limit:
        raise _too_large_upload(len(content), limit)
    return content


def _too_large_upload(size: int, limit: int) -> InvalidArgument:
    return FileRefused(
        f"The file is {size:,} bytes; the limit is {limit:,} (MAX_UPLOAD_SIZE="
        f"{format_size(limit)}): send it in parts and join them in the sandbox, or raise "
        f"MAX_UPLOAD_SIZE."
    )


def _too_large(config: SandboxConfig) -> str:
    # A download is one result: MAX_RESULT_SIZE bounds it too, and the smaller one binds.
    if config.max_download_size <= config.max_result_size:
        return (
            f"The limit is {config.max_download_size:,} bytes (MAX_DOWNLOAD_SIZE="
            f"{format_size(config.max_download_size)}): make it smaller in the sandbox "
            f"(compress it, or split it and download the parts), or raise MAX_DOWNLOAD_SIZE."
        )
    return (
        f"The limit is {config.max_result_size:,} bytes (MAX_RESULT_SIZE="
        f"{format_size(config.max_result_size)}): make it smaller in the sandbox (compress "
        f"it, or split it and download the parts), or raise MAX_RESULT_SIZE."
    )


def refusal(answer: dict[str, Any], config: SandboxConfig, op: str) -> OmcpError:
    """The error for a request the runner refused or failed."""
    kind, message = answer.get("error"), str(answer.get("message") or "failed")
    fixes = {
        "outside": f"{WHERE}.",
        "link": f"Name the file itself. {WHERE}.",
        "missing": (
            # list_files shows a name that is not UTF-8 with U+FFFD: no path matches it.
            "A name that list_files shows with \ufffd is not UTF-8 in the sandbox and "
            "cannot be named here: rename it there first (execute_python_code, "
            "os.rename with the bytes name from os.listdir(b'.'))."
            if "\ufffd" in message
            else "list_files shows what is there."
        ),
        "directory": "Name a file; list_files shows what the directory holds.",
        "not_directory": (
            "download_file reads a file; list_files lists a directory."
            if op == "list"
            else "A file is in the way of that path: pick another path."
        ),
        "special": "Only regular files can be uploaded or downloaded.",
        "too_large": _too_large(config),
        "full": (
            f"The sandbox's disk is full (SANDBOX_WORKDIR_SIZE="
            f"{format_size(config.sandbox_workdir_size)} for /sandbox, SANDBOX_TMP_SIZE="
            f"{format_size(config.sandbox_tmp_size)} for /tmp): delete files there first."
        ),
        "permission": "The sandbox's user may not write there: pick a path under /sandbox.",
        "busy": (
            f"The sandbox is at its process limit (SANDBOX_PIDS_LIMIT="
            f"{config.sandbox_pids_limit}): the code's processes and threads take every one. "
            f"End them (reset_sandbox_state ends a stateful interpreter and all it started), "
            f"then try again."
        ),
        "invalid": f"{WHERE}.",
    }
    if kind in fixes:
        return FileRefused(f"{message[:600]}. {fixes[kind]}")
    return EngineError(f"The file operation failed in the sandbox: {message[:600]}.")


def upload_result(answer: dict[str, Any], content: bytes) -> UploadResult:
    return UploadResult(
        success=True,
        path=str(answer["path"]),
        size=int(answer["size"]),
        sha256=hashlib.sha256(content).hexdigest(),
    )


def download(answer: dict[str, Any], data: bytes) -> Download:
    """Describe a file got: an image, text, or other bytes."""
    path = str(answer["path"])
    mime = next((m for magic, m in _IMAGE_MAGIC if data.startswith(magic)), None)
    if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    text = None
    if mime is not None:
        kind = "image"
    else:
        guessed = mimetypes.guess_type(path)[0]
        text = as_text(data)
        kind = "text" if text is not None else "binary"
        mime = guessed or ("text/plain" if kind == "text" else "application/octet-stream")
    result = DownloadResult(
        success=True,
        path=path,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        mime_type=mime,
        kind=kind,
        text=text,
    )
    return Download(result=result, data=data)


# A control character other than tab, newline and carriage return is six bytes as
# JSON writes it: a file of them would travel at six times its size.
_CONTROL = bytes(c for c in range(32) if c not in (9, 10, 13)) + b"\x7f"


def as_text(data: bytes) -> str | None:
    """The file as text, when it is UTF-8 that stays about its size as JSON; else None
    (it then travels as bytes, base64: a third larger, whatever it holds)."""
    if b"\x00" in data:
        return None
    controls = len(data) - len(data.translate(None, _CONTROL))
    if controls * 5 > len(data) // 20 + 64:  # JSON escapes add more than 5% (+64 bytes)
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def listing(answer: dict[str, Any]) -> ListFilesResult:
    entries = [
        FileEntry(
            path=str(item["path"]),
            type=str(item["type"]),
            size=int(item["size"]),
            modified=utc_iso(float(item["modified"])),
            target=item.get("target"),
        )
        for item in answer.get("entries") or []
    ]
    return ListFilesResult(
        success=True,
        path=str(answer["path"]),
        entries=entries,
        count=len(entries),
        truncated=bool(answer.get("truncated")),
        free_bytes=int(answer.get("free") or 0),
    )
