"""The omcp_py MCP server: tools that give an assistant isolated Python sandboxes.

The tools are thin: they validate through their signatures, call the one
SandboxManager built in the server's lifespan, and return pydantic models. This
module knows MCP and nothing about Docker.
"""

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import anyio
import anyio.from_thread
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer  # MCPServer: mcp 2.x's successor to FastMCP
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field, ValidationError

from omcp_py import __version__, content, principals, transport
from omcp_py.arguments import plain_error, strict_model
from omcp_py.config import SandboxConfig, empty_settings, load_config
from omcp_py.errors import ConfigError, OmcpError
from omcp_py.files import MAX_PATH
from omcp_py.models import (
    CreateSandboxResult,
    ImportResult,
    InstallResult,
    ListFilesResult,
    ListSandboxesResult,
    RemoveSandboxResult,
    ResetStateResult,
    UploadResult,
)
from omcp_py.sandbox_manager import SandboxManager

log = logging.getLogger("omcp_py")

INSTRUCTIONS = (
    "Run Python in isolated sandboxes: create_sandbox, then execute_python_code as often as "
    "needed (files in /sandbox persist between runs of the same sandbox), then remove_sandbox. "
    "install_package adds packages from the package index to a sandbox. "
    "upload_file, download_file and list_files move files in and out of /sandbox. "
    "Matplotlib figures a run shows or leaves open come back as images. "
    "Sandboxes have no network, limited memory and CPU, and expire when idle."
)

SandboxId = Annotated[
    str, Field(description="Id returned by create_sandbox.", min_length=1, max_length=256)
]
FilePath = Annotated[
    str,
    Field(
        description="Relative to /sandbox (the working directory), or absolute under /sandbox "
        "or /tmp; '..' and symbolic links are refused.",
        max_length=MAX_PATH,
    ),
]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
# What a tool is handed: its lifespan context is the server's one SandboxManager.
ToolContext = Context[SandboxManager, Any]


def tool_errors(fn: F) -> F:
    """Serve the call as its caller's principal (the bearer token's name over HTTP,
    the local user over stdio) and report the manager's failures as tool errors
    (isError) with their own message.

    Whatever a result or message holds, the transport makes it encodable
    (``transport.EncodableWriter``).
    """

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = get_access_token()
        with principals.acting_as(token.client_id if token else principals.LOCAL):
            try:
                return await _unless_the_client_leaves(kwargs.get("ctx"), fn(*args, **kwargs))
            except OmcpError as exc:
                raise ToolError(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


DISCONNECT_POLL = 0.5  # seconds between looks at an HTTP caller's connection


async def _unless_the_client_leaves(ctx: Any, call: Awaitable[Any]) -> Any:
    """Await ``call``; over HTTP, cancel it when the caller's connection closes (the
    run then stops in the sandbox, as for notifications/cancelled): nobody is left to
    read its result. Over stdio the transport ends the server instead."""
    try:
        request = ctx.request_context.request
    except (AttributeError, ValueError):  # no context: not a tool call of a transport
        request = None
    disconnected = getattr(request, "is_disconnected", None)
    if disconnected is None:
        return await call
    left = False

    async def watch(scope: anyio.CancelScope) -> None:
        nonlocal left
        try:
            while not await disconnected():
                await anyio.sleep(DISCONNECT_POLL)
        except Exception:  # the connection cannot be watched: the call goes on
            return
        left = True
        scope.cancel()

    result = error = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch, tg.cancel_scope)
        try:
            result = await call
        except Exception as exc:  # raised as itself below, not in an exception group
            error = exc
        tg.cancel_scope.cancel()
    if left:
        raise ToolError("The client disconnected: the call was stopped.")
    if error is not None:
        raise error
    return result


def _hints(
    read_only: bool = False,
    destructive: bool = False,
    idempotent: bool = False,
    open_world: bool = False,
) -> ToolAnnotations:
    # Sandboxes never reach the network; only the installer talks to a package index.
    return ToolAnnotations(
        read_only_hint=read_only,
        destructive_hint=destructive,
        idempotent_hint=idempotent,
        open_world_hint=open_world,
    )


def _manager(ctx: ToolContext) -> SandboxManager:
    return ctx.request_context.lifespan_context


def _progress(ctx: ToolContext) -> Callable[[float, float, str], None]:
    """A progress reporter the manager's worker threads can call (a no-op unless the
    client sent a progress token)."""

    def report(done: float, total: float, message: str) -> None:
        anyio.from_thread.run(ctx.report_progress, done, total, message)

    return report


def create_server(
    config: SandboxConfig,
    cleaned_up: threading.Event | None = None,
    auth: AuthSettings | None = None,
    token_verifier: TokenVerifier | None = None,
) -> MCPServer:
    """Build the MCP server with its tools; nothing runs until it is served.

    Args:
        config: the settings; defaults and bounds in the tool schemas come from it.
        cleaned_up: set once the lifespan has removed this server's sandboxes.
        auth: over HTTP with tokens: the resource server's settings.
        token_verifier: over HTTP with tokens: who a bearer token is.

    Returns:
        The server, ready for ``run_stdio_async``.
    """

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[SandboxManager]:
        manager = SandboxManager(config)
        try:
            async with manager.running():
                yield manager
        finally:
            if cleaned_up is not None:
                cleaned_up.set()

    server = SandboxServer(
        "omcp_py",
        title="Python sandboxes",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level=config.effective_log_level,  # type: ignore[arg-type]
        debug=config.debug,
        auth=auth,
        token_verifier=token_verifier,
    )

    @server.tool(
        title="Create a Python sandbox",
        annotations=_hints(),
    )
    @tool_errors
    async def create_sandbox(
        ctx: ToolContext,
        timeout: Annotated[
            int, Field(ge=1, le=86400, description="Idle seconds before the sandbox is removed.")
        ] = config.sandbox_timeout,
        stateful: Annotated[
            bool,
            Field(
                description="Keep variables, imports and data between executions, like a "
                "notebook (default: each execution starts fresh)."
            ),
        ] = False,
        allow_hosts: Annotated[
            list[Annotated[str, Field(max_length=300)]] | None,
            Field(
                max_length=50,
                description="host:port pairs the code may connect to (over HTTP(S) through "
                "a filtering proxy), each one the server's SANDBOX_ALLOWED_HOSTS offers; "
                "omit for no network at all.",
            ),
        ] = None,
    ) -> CreateSandboxResult:
        """Create an isolated Python sandbox (no network, limited memory and CPU); returns its id.

        The first one on a new machine may wait for the image to download (progress is
        reported).

        Args:
            timeout: idle seconds after which the sandbox and its files are removed.
            stateful: executions share one interpreter, so variables survive between them.
            allow_hosts: hosts the code may reach, e.g. ["api.example.com:443"], only
                those the server's operator allowed; the result lists them.
        """
        return await _manager(ctx).create(timeout, stateful, _progress(ctx), allow_hosts)

    @server.tool(
        title="List sandboxes",
        annotations=_hints(read_only=True, idempotent=True),
    )
    @tool_errors
    async def list_sandboxes(
        ctx: ToolContext,
        include_inactive: Annotated[
            bool, Field(description="Also list sandboxes idle past their timeout.")
        ] = False,
    ) -> ListSandboxesResult:
        """List this server's sandboxes with their status and idle time.

        Args:
            include_inactive: also list sandboxes idle past their timeout (about to be removed).
        """
        return await _manager(ctx).list(include_inactive)

    @server.tool(
        title="Remove a sandbox",
        annotations=_hints(destructive=True, idempotent=True),
    )
    @tool_errors
    async def remove_sandbox(
        ctx: ToolContext,
        sandbox_id: SandboxId,
        force: Annotated[
            bool,
            Field(description="Remove it even while it runs code or an install (which ends)."),
        ] = False,
    ) -> RemoveSandboxResult:
        """Remove a sandbox and every file in it.

        Args:
            sandbox_id: the sandbox to remove.
            force: remove it even while it runs code or an install (which then ends).
        """
        return await _manager(ctx).remove(sandbox_id, force)

    @server.tool(
        title="Run Python code",
        annotations=_hints(),
    )
    @tool_errors
    async def execute_python_code(
        ctx: ToolContext,
        sandbox_id: SandboxId,
        code: Annotated[str, Field(description="Python source to run, as a script.")],
        timeout: Annotated[
            int,
            Field(
                ge=1,
                le=config.max_execution_timeout,
                description="Seconds before the run and every process it started are killed.",
            ),
        ] = config.execution_timeout,
    ) -> CallToolResult:
        """Run Python code in a sandbox; returns stdout, stderr, exit code and figures.

        Each run starts fresh, unless the sandbox was created with stateful=true (then
        variables and imports of earlier runs are there). Files written under /sandbox
        (the working directory) stay for the next run either way.
        Code that raises is a normal result with success false and the traceback in error.
        Matplotlib figures the code shows (plt.show()) or leaves open come back as images.

        Args:
            sandbox_id: the sandbox to run in.
            code: Python source, run like `python -c`.
            timeout: seconds before the run is killed.
        """
        outcome = await _manager(ctx).execute(sandbox_id, code, timeout, _progress(ctx))
        return content.execution(outcome, limit=config.max_result_size)

    @server.tool(
        title="Reset a stateful sandbox",
        annotations=_hints(destructive=True, idempotent=True),
    )
    @tool_errors
    async def reset_sandbox_state(ctx: ToolContext, sandbox_id: SandboxId) -> ResetStateResult:
        """Forget the variables, imports and data of a stateful sandbox; its files stay.

        Args:
            sandbox_id: a sandbox created with stateful=true.
        """
        return await _manager(ctx).reset_state(sandbox_id)

    @server.tool(
        title="Install Python packages",
        annotations=_hints(idempotent=True, open_world=True),
    )
    @tool_errors
    async def install_package(
        ctx: ToolContext,
        sandbox_id: SandboxId,
        package: Annotated[
            str,
            Field(
                description="Requirement specifiers separated by spaces, e.g. "
                "'pandas', 'numpy==2.1.0 requests', 'httpx[http2]>=0.27'.",
                max_length=65536,
            ),
        ],
        timeout: Annotated[
            int,
            Field(
                ge=1,
                le=config.max_install_timeout,
                description="Seconds before the install is stopped.",
            ),
        ] = 60,
    ) -> InstallResult:
        """Install Python packages (with their dependencies) into a sandbox; importable at once.

        The sandbox itself stays offline: a separate installer fetches the packages.
        Only requirement specifiers are accepted (no pip options, URLs or paths).

        Args:
            sandbox_id: the sandbox to install into.
            package: one or more requirements separated by spaces, e.g. 'numpy==2.1.0 requests'.
            timeout: seconds before the install is stopped (large packages take minutes).
        """
        return await _manager(ctx).install(sandbox_id, package, timeout, _progress(ctx))

    @server.tool(
        title="Put a file into a sandbox",
        annotations=_hints(idempotent=True),
    )
    @tool_errors
    async def upload_file(
        ctx: ToolContext,
        sandbox_id: SandboxId,
        path: FilePath,
        text: Annotated[
            str | None, Field(description="The content, as text (written as UTF-8).")
        ] = None,
        content_base64: Annotated[
            str | None, Field(description="The content, as base64 (for binary files).")
        ] = None,
    ) -> UploadResult:
        """Write a file into a sandbox, replacing a file of that name; folders are made.

        Give exactly one of text and content_base64.

        Args:
            sandbox_id: the sandbox.
            path: e.g. 'data.csv' (that is /sandbox/data.csv) or '/tmp/input.bin'.
            text: the content as text.
            content_base64: the content as base64, for binary files.
        """
        return await _manager(ctx).files.upload(sandbox_id, path, text, content_base64)

    @server.tool(
        title="Get a file from a sandbox",
        annotations=_hints(read_only=True, idempotent=True),
    )
    @tool_errors
    async def download_file(
        ctx: ToolContext, sandbox_id: SandboxId, path: FilePath
    ) -> CallToolResult:
        """Read a file of a sandbox: text comes as text, PNG/JPEG as an image, other bytes as
        an embedded resource (base64).

        Args:
            sandbox_id: the sandbox.
            path: e.g. 'result.csv' (that is /sandbox/result.csv) or '/tmp/plot.png'.
        """
        got = await _manager(ctx).files.download(sandbox_id, path)
        return content.download(got, limit=config.max_result_size)

    if config.host_input_dirs_list:

        @server.tool(
            title="Copy a file of the user's machine into a sandbox",
            annotations=_hints(idempotent=True),
        )
        @tool_errors
        async def import_host_file(
            ctx: ToolContext,
            sandbox_id: SandboxId,
            host_path: Annotated[
                str,
                Field(
                    description="The file on the user's machine: absolute under one of "
                    f"{', '.join(config.host_input_dirs_list)}, or relative to the only one.",
                    max_length=MAX_PATH,
                ),
            ],
            path: FilePath,
        ) -> ImportResult:
            """Copy a file from the user's machine into a sandbox, without its bytes passing
            through the conversation. Only files under the directories the user allowed
            (HOST_INPUT_DIRS) can be read; a file of that name in the sandbox is replaced.

            Args:
                sandbox_id: the sandbox.
                host_path: e.g. '/home/me/data/sales.csv'.
                path: where it goes, e.g. 'sales.csv' (that is /sandbox/sales.csv).
            """
            return await _manager(ctx).files.import_host(sandbox_id, host_path, path)

    if config.host_output_dir:

        @server.tool(
            title="Save a sandbox file on the user's machine",
            annotations=_hints(),
        )
        @tool_errors
        async def export_file(
            ctx: ToolContext,
            sandbox_id: SandboxId,
            path: FilePath,
            name: Annotated[
                str | None,
                Field(
                    description="File name to save it under (default: its own); an existing "
                    "file is never replaced: the new one gets a numbered name.",
                    max_length=255,
                ),
            ] = None,
        ) -> CallToolResult:
            """Save a sandbox file in the user's output directory (HOST_OUTPUT_DIR) and
            return a link to it, not its bytes: for results the user should keep.

            Args:
                sandbox_id: the sandbox.
                path: e.g. 'report.pdf' (that is /sandbox/report.pdf).
                name: the file name on the user's machine.
            """
            return content.export(await _manager(ctx).files.export(sandbox_id, path, name))

    @server.tool(
        title="List the files of a sandbox",
        annotations=_hints(read_only=True, idempotent=True),
    )
    @tool_errors
    async def list_files(
        ctx: ToolContext,
        sandbox_id: SandboxId,
        path: Annotated[
            str,
            Field(
                description="The directory: relative to /sandbox, or absolute under /sandbox "
                "or /tmp.",
                max_length=MAX_PATH,
            ),
        ] = "/sandbox",
    ) -> ListFilesResult:
        """List the files under a directory of a sandbox (default /sandbox), with sizes.

        Args:
            sandbox_id: the sandbox.
            path: the directory to list, all the way down.
        """
        return await _manager(ctx).files.list(sandbox_id, path)

    _strict_arguments(server)
    return server


def _strict_arguments(server: MCPServer) -> None:
    """Every tool refuses arguments it does not have, or of another type than its schema
    says (``arguments.strict_model``); the schema then says
    ``additionalProperties: false``. MCPServer has no public switch for this; ``mcp`` is
    pinned below 3, and tests call tools with unknown and mistyped arguments."""
    for tool in server._tool_manager.list_tools():
        tool.fn_metadata.arg_model = strict_model(tool.fn_metadata.arg_model)
        tool.parameters = tool.fn_metadata.arg_model.model_json_schema(by_alias=True)


class SandboxServer(MCPServer):
    """MCPServer whose refused tool arguments read as one plain line."""

    async def call_tool(self, name: str, arguments: dict[str, Any], *args: Any, **kw: Any) -> Any:
        try:
            return await super().call_tool(name, arguments, *args, **kw)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(exc, UnexpectedToolError) or not isinstance(cause, ValidationError):
                raise
            tool = self._tool_manager.get_tool(name)
            accepted = sorted(tool.parameters.get("properties", {})) if tool else []
            raise ToolError(plain_error(name, cause, accepted)) from cause


def configure_logging(level: str) -> None:
    """Send every log record to stderr: stdout carries the protocol and nothing else."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    if level != "DEBUG":
        for noisy in ("urllib3", "docker", "mcp", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


async def serve(server: MCPServer, cleaned_up: threading.Event) -> None:
    """Serve over stdio until stdin closes, or SIGTERM/SIGINT arrives.

    Args:
        server: from :func:`create_server`, built with the same ``cleaned_up``.
        cleaned_up: set by the server's lifespan once its sandboxes are removed.
    """
    async with anyio.create_task_group() as tg:
        if sys.platform != "win32":
            tg.start_soon(_stop_on_signal, tg.cancel_scope, cleaned_up)
        await transport.run_stdio(server)
        tg.cancel_scope.cancel()


async def _stop_on_signal(scope: anyio.CancelScope, cleaned_up: threading.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s received: removing this server's sandboxes", signal.Signals(signum).name)
            break
    scope.cancel()  # unwinds the lifespan, whose exit removes the sandboxes
    with anyio.CancelScope(shield=True), anyio.move_on_after(60):
        while not cleaned_up.is_set():
            await anyio.sleep(0.05)
    # The SDK's stdin reader is a thread blocked in read(): it cannot be
    # cancelled and would keep the process alive until the client closes stdin.
    logging.shutdown()
    os._exit(0)


def run_stdio() -> None:
    """Serve MCP over stdio with the settings of the environment and ``.env``."""
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"omcp_py: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(config.effective_log_level)
    for variable, default in empty_settings():
        log.info("%s is empty: using the default %s", variable, default)
    cleaned_up = threading.Event()
    server = create_server(config, cleaned_up)
    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C during cleanup
        anyio.run(serve, server, cleaned_up)
