"""What the tools say: raw executions and installs turned into results, the checks of
the code sent, and the errors of a sandbox that went away. Pure: no Docker, no I/O.
"""

from collections.abc import Callable
from typing import Any

from omcp_py.boundary import MAX_FIGURES
from omcp_py.config import SandboxConfig, format_size
from omcp_py.errors import InvalidArgument, SandboxLimitReached, SandboxNotFound
from omcp_py.images import Progress
from omcp_py.installer import RawInstall
from omcp_py.models import ExecutionResult, FigureInfo, InstallResult
from omcp_py.packages import explain_failure
from omcp_py.runner.client import RawExecution


def encode_code(code: str, limit: int) -> bytes:
    """The code as UTF-8 for the runner; InvalidArgument when it cannot be run as sent.

    Args:
        code: the Python source.
        limit: MAX_CODE_SIZE, in bytes.
    """
    position = code.find("\x00")
    if position >= 0:
        raise InvalidArgument(
            f"code contains a NUL byte at character {position}: remove it and send text only."
        )
    try:
        payload = code.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            f"code is not valid Unicode text (a lone surrogate at character {exc.start}): "
            f"send UTF-8 text."
        ) from None
    if len(payload) > limit:
        raise InvalidArgument(
            f"code is {len(payload):,} bytes; the limit is {limit:,} "
            f"(MAX_CODE_SIZE): send less, or write data to a file in a few steps."
        )
    return payload


def check_run_timeout(timeout: int, most: int) -> None:
    if not 1 <= timeout <= most:
        raise InvalidArgument(
            f"timeout={timeout} is out of range: use 1 to {most} seconds (MAX_EXECUTION_TIMEOUT)."
        )


def check_room(total: int, full: bool, held: int, config: SandboxConfig) -> None:
    """Refuse a new sandbox past MAX_SANDBOXES (``full``) or, for the caller who holds
    ``held`` already, past MAX_SANDBOXES_PER_PRINCIPAL."""
    if full:
        raise SandboxLimitReached(
            f"Maximum number of sandboxes reached ({total}): remove one with remove_sandbox "
            f"(list_sandboxes shows them), or raise MAX_SANDBOXES."
        )
    most = config.max_sandboxes_per_principal
    if most is not None and held >= most:
        raise SandboxLimitReached(
            f"You have {held} sandboxes, the most one caller may have on this server "
            f"(MAX_SANDBOXES_PER_PRINCIPAL={most}): remove one with remove_sandbox "
            f"(list_sandboxes shows yours)."
        )


def check_install_timeout(timeout: int, most: int) -> None:
    if not 1 <= timeout <= most:
        raise InvalidArgument(
            f"timeout={timeout} is out of range: use 1 to {most} seconds (MAX_INSTALL_TIMEOUT)."
        )


def run_progress(
    progress: Progress | None, timeout: int
) -> Callable[[float, int, int], None] | None:
    """What a run reports (seconds, stdout and stderr bytes so far), said for a client."""
    if progress is None:
        return None

    def report(elapsed: float, stdout: int, stderr: int) -> None:
        progress(
            elapsed,
            float(timeout),
            f"running for {elapsed:.0f} s of at most {timeout} s; "
            f"{stdout:,} bytes of stdout, {stderr:,} of stderr so far",
        )

    return report


def install_progress(progress: Progress | None, timeout: int) -> Callable[[float], None] | None:
    """What an install reports (seconds so far), said for a client."""
    if progress is None:
        return None

    def report(elapsed: float) -> None:
        progress(elapsed, float(timeout), f"installing for {elapsed:.0f} s of at most {timeout} s")

    return report


def execution_result(
    raw: RawExecution, *, timeout: int, stateful: bool, config: SandboxConfig
) -> ExecutionResult:
    """A run as the tool returns it: the runner's notices said in ``error``."""
    notices = []
    state = None
    if stateful:
        state = "kept"
        if raw.state.get("killed"):
            state = "lost"
        elif raw.state.get("fresh"):
            state = "fresh"
        previous = raw.state.get("previous_lost")
        if previous:
            notices.append(
                f"The previous interpreter of this stateful sandbox died ({previous}): this "
                f"run started with fresh state; earlier variables and imports are gone."
            )
    if raw.timed_out:
        notices.append(
            f"Execution timed out after {timeout} s: every process it started was killed. "
            f"The sandbox is still usable; pass a larger timeout for longer work."
        )
    if raw.oom_killed:
        notices.append(
            f"A process was killed because the sandbox ran out of memory "
            f"(SANDBOX_MEMORY={format_size(config.sandbox_memory)})."
        )
    if raw.supervisor_lost:
        notices.append(
            "The sandbox's runner did not answer in time; every process of the run was "
            "killed from outside."
        )
    if stateful and raw.state.get("killed") and not raw.timed_out:
        notices.append(
            f"The interpreter died during this run ({raw.state['killed']}): its state is "
            f"lost, and the next run starts fresh."
        )
    elif stateful and raw.timed_out:
        notices.append("The interpreter was ended with the run: the next run starts fresh.")
    if raw.images_left_out:
        why = "; ".join(raw.images_left_out_why) or "the sandbox did not say why"
        notices.append(
            f"{raw.images_left_out} figure(s) left out ({why}): a result carries at most "
            f"{MAX_FIGURES} PNG or JPEG figures, under IMAGE_BUDGET="
            f"{format_size(config.image_budget)} (base64) together. Save them with "
            f"savefig and get them with download_file, or draw fewer per run."
        )
    error = raw.stderr
    if notices:
        error = (error.rstrip("\n") + "\n" if error else "") + "\n".join(
            f"[omcp_py] {n}" for n in notices
        )
    return ExecutionResult(
        success=raw.exit_code == 0 and not raw.timed_out,
        output=raw.stdout,
        error=error or None,
        exit_code=raw.exit_code,
        timed_out=raw.timed_out,
        duration_ms=raw.duration_ms,
        truncated=raw.truncated,
        state=state,
        images=[
            FigureInfo(mime_type=f.mime_type, width=f.width, height=f.height, size=f.size)
            for f in raw.figures
        ],
        images_left_out=raw.images_left_out,
    )


def install_result(
    raw: RawInstall, *, requirements: list[str], timeout: int, config: SandboxConfig
) -> InstallResult:
    """An install as the tool returns it: a failure explained in a sentence or two."""
    error = None
    if raw.timed_out:
        error = (
            f"The install did not finish within {timeout} s: the installer and its "
            f"processes were stopped, nothing new was installed, the sandbox is unharmed. "
            f"Pass a larger timeout (large packages take minutes)."
        )
    elif raw.oom_killed:
        error = (
            f"The installer ran out of memory "
            f"(SANDBOX_MEMORY={format_size(config.sandbox_memory)}); nothing new "
            f"was installed."
        )
    elif raw.disk_exceeded:
        error = (
            f"The install was stopped when the sandbox's packages took "
            f"{raw.disk_exceeded / 1024**2:.1f} MiB on the host's disk, over "
            f"PACKAGES_DISK_LIMIT={format_size(config.packages_disk_limit)}; what it wrote "
            f"was removed and the sandbox's packages are as before. Install fewer or smaller "
            f"packages, or raise PACKAGES_DISK_LIMIT."
        )
    elif raw.exit_code != 0:
        error = explain_failure(raw.log, config, raw.egress)
    elif not raw.installed:
        error = "The installer reported success but the sandbox holds no package."
    return InstallResult(
        success=error is None,
        output=raw.log,
        error=error,
        exit_code=raw.exit_code,
        requested=requirements,
        installed=raw.installed,
        timed_out=raw.timed_out,
        duration_ms=raw.duration_ms,
    )


def gone(sandbox_id: str, state: dict[str, Any], config: SandboxConfig) -> SandboxNotFound:
    """Why a sandbox's container no longer answers, from its last engine state."""
    if state.get("OOMKilled"):
        runtime = config.sandbox_runtime or "the engine's default runtime"
        return SandboxNotFound(
            f"Sandbox {sandbox_id} was killed because it ran out of memory "
            f"(SANDBOX_MEMORY={format_size(config.sandbox_memory)}); under {runtime} "
            f"that ends the whole sandbox, and its files and state are lost. Create a new "
            f"sandbox, and use less memory at once (or raise SANDBOX_MEMORY)."
        )
    return SandboxNotFound(
        f"Sandbox {sandbox_id} has stopped or was removed outside omcp_py: "
        f"create a new one with create_sandbox."
    )


def removed_during_run(sandbox_id: str) -> SandboxNotFound:
    return SandboxNotFound(
        f"Sandbox {sandbox_id} was removed while the code was running; its output is lost. "
        f"Create a new one with create_sandbox."
    )


def removed_during_install(sandbox_id: str) -> SandboxNotFound:
    return SandboxNotFound(
        f"Sandbox {sandbox_id} was removed during the install. "
        f"Create a new one with create_sandbox."
    )
