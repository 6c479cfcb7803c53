"""Tool results: pydantic models, so every tool has an output schema."""

from pydantic import BaseModel, Field


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


class ExecutionResult(BaseModel):
    """What one run of Python code produced. A failing program is data, not an error."""

    success: bool = Field(description="True when the code exited with 0 and did not time out.")
    output: str = Field(description="What the code wrote to stdout.")
    error: str | None = Field(
        description="What it wrote to stderr (tracebacks), plus any notice from the sandbox; "
        "null when empty."
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
