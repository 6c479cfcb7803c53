"""Tool results: pydantic models, so every tool has an output schema."""

from datetime import datetime, timezone

from pydantic import BaseModel, Field

from omcp_py.runner.pid1.protocol import LIST_BYTES, LIST_LIMIT


def utc_iso(epoch: float) -> str:
    """A Unix time as the results write it: ISO 8601, UTC, to the second."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


class CreateSandboxResult(BaseModel):
    """A new sandbox, ready to run code."""

    success: bool = Field(description="True: the sandbox exists and is running.")
    sandbox_id: str = Field(description="Pass this id to the other tools.")
    created_at: str = Field(description="When it was created (ISO 8601, UTC).")
    last_used: str = Field(description="When it was last used (ISO 8601, UTC).")
    timeout: int = Field(description="Idle seconds after which it is removed.")
    stateful: bool = Field(
        default=False, description="True: executions share variables, imports and data."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "host:port the code may connect to, through the sandbox's egress filter "
            "(HTTPS_PROXY and HTTP_PROXY are set for it); empty: no network at all."
        ),
    )


class SandboxInfo(BaseModel):
    """One sandbox as list_sandboxes shows it."""

    id: str = Field(description="The sandbox id.")
    created_at: str = Field(description="When it was created (ISO 8601, UTC).")
    last_used: str = Field(description="When it last ran code (ISO 8601, UTC).")
    status: str = Field(description="'active', 'busy' (running code now) or 'idle' (expired).")
    idle_seconds: float = Field(description="Seconds since it was last used.")
    timeout: int = Field(description="Idle seconds after which it is removed.")


class ListSandboxesResult(BaseModel):
    """The sandboxes of this server."""

    success: bool = Field(description="True when the engine could be asked.")
    sandboxes: list[SandboxInfo] = Field(description="The sandboxes, oldest first.")
    count: int = Field(description="How many are listed.")


class RemoveSandboxResult(BaseModel):
    """Outcome of remove_sandbox."""

    success: bool = Field(description="True: the sandbox and its files are gone.")
    message: str = Field(description="What happened.")


class FigureInfo(BaseModel):
    """One figure of a run; the image itself is a content block of the result."""

    mime_type: str = Field(description="image/png, or image/jpeg when that fit the budget.")
    width: int = Field(description="Width in pixels.")
    height: int = Field(description="Height in pixels.")
    size: int = Field(description="Bytes of the encoded image (before base64).")


class ExecutionResult(BaseModel):
    """What one run of Python code produced. A failing program is data, not an error."""

    success: bool = Field(description="True when the code exited with 0 and did not time out.")
    output: str = Field(description="What the code wrote to stdout (the 'stdout:' block).")
    error: str | None = Field(
        description="What it wrote to stderr (tracebacks), plus any notice from the sandbox "
        "(the 'stderr:' block); null when empty."
    )
    exit_code: int = Field(description="The process exit code; 128+N when killed by signal N.")
    timed_out: bool = Field(description="True when the time limit killed it.")
    duration_ms: float = Field(description="How long the code ran, in milliseconds.")
    truncated: bool = Field(
        default=False, description="True when output was cut to OUTPUT_LIMIT (head and tail kept)."
    )
    state: str | None = Field(
        default=None,
        description="Stateful sandboxes only: 'kept' (earlier variables were there), 'fresh' "
        "(a new interpreter: first run, after a reset, or after the last one died), 'lost' "
        "(the interpreter died in this run; the next run starts fresh). Null when stateless.",
    )
    images: list[FigureInfo] = Field(
        default_factory=list,
        description="The matplotlib figures the code showed or left open, in order; each is "
        "an image content block after the output.",
    )
    images_left_out: int = Field(
        default=0,
        description="Figures not returned because the images of one result must stay under "
        "IMAGE_BUDGET (save them with savefig and use download_file).",
    )


class ResetStateResult(BaseModel):
    """Outcome of reset_sandbox_state."""

    success: bool = Field(description="True: the next execution starts with fresh state.")
    message: str = Field(description="What happened.")


class InstallResult(BaseModel):
    """What one install_package call did. A failed install is data, not an error."""

    success: bool = Field(description="True when every requirement is installed.")
    output: str = Field(description="The installer's log (pip's output; head and tail if long).")
    error: str | None = Field(description="What failed, in a sentence or two; null on success.")
    exit_code: int = Field(description="The installer's exit code (0: success).")
    requested: list[str] = Field(description="The requirements as parsed and sent to pip.")
    installed: list[str] = Field(
        description="name==version of every package now installed in the sandbox."
    )
    timed_out: bool = Field(description="True when the timeout stopped the installer.")
    duration_ms: float = Field(description="How long the install took, in milliseconds.")


class UploadResult(BaseModel):
    """A file written into a sandbox."""

    success: bool = Field(description="True: the file is there, complete.")
    path: str = Field(description="Its absolute path in the sandbox.")
    size: int = Field(description="Its size in bytes.")
    sha256: str = Field(description="SHA-256 of the content written, in hex.")


class ImportResult(UploadResult):
    """A file of the user's machine copied into a sandbox."""

    host_path: str = Field(description="The file it was copied from, on the user's machine.")


class ExportResult(BaseModel):
    """A sandbox file copied to the user's machine (HOST_OUTPUT_DIR)."""

    success: bool = Field(description="True: the whole file is there.")
    path: str = Field(description="Its absolute path in the sandbox.")
    host_path: str = Field(description="Where it was written on the user's machine.")
    uri: str = Field(description="The same as a file:// URI.")
    size: int = Field(description="Its size in bytes.")
    sha256: str = Field(description="SHA-256 of the content, in hex.")
    mime_type: str = Field(description="Its type, from its first bytes and its name.")


class DownloadResult(BaseModel):
    """A file read from a sandbox; the text, image or bytes follow as a content block."""

    success: bool = Field(description="True: the whole file was read.")
    path: str = Field(description="Its absolute path in the sandbox.")
    size: int = Field(description="Its size in bytes.")
    sha256: str = Field(description="SHA-256 of the content, in hex.")
    mime_type: str = Field(description="Its type, from its first bytes and its name.")
    kind: str = Field(
        description="'text' (a text block with the content follows), 'image' (an image "
        "content block follows) or 'binary' (an embedded resource with the bytes in base64 "
        "follows)."
    )
    text: str | None = Field(description="The content of a text (UTF-8) file; null otherwise.")


class FileEntry(BaseModel):
    """One entry of list_files."""

    path: str = Field(description="Path relative to the directory listed.")
    type: str = Field(description="'file', 'directory', 'symlink', 'fifo', 'socket' or 'device'.")
    size: int = Field(description="Bytes (files only; 0 for the others).")
    modified: str = Field(description="Last modification (ISO 8601, UTC).")
    target: str | None = Field(default=None, description="Where a symlink points; not followed.")


class ListFilesResult(BaseModel):
    """What a directory of a sandbox holds, all the way down."""

    success: bool = Field(description="True when the directory could be read.")
    path: str = Field(description="The directory listed (absolute).")
    entries: list[FileEntry] = Field(description="Everything under it, sorted by path.")
    count: int = Field(description="How many entries are listed.")
    truncated: bool = Field(
        description=f"True when the listing was cut (over {LIST_LIMIT} entries or about "
        f"{LIST_BYTES // 1024} KiB of names "
        "and link targets): the rest is left out.",
    )
    free_bytes: int = Field(description="Room left on the filesystem of that directory, in bytes.")
