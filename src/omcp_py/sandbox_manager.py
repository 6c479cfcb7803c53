"""SandboxManager: the life of every sandbox of this server, and the only Docker caller.

The engine is the source of truth for which sandboxes exist (labels mark ours);
the dict kept here is a cache of what the engine does not store (last use, a
lock per sandbox) and is reconciled with the engine whenever it matters.
Bookkeeping happens on the event loop; every blocking Docker call runs in a
worker thread, under a limiter, so a slow sandbox never stalls the others.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from omcp_py import files, ownership
from omcp_py.boundary import MAX_FIGURES, Figure
from omcp_py.cancel import Stop
from omcp_py.config import SandboxConfig, format_size
from omcp_py.engine import Engine
from omcp_py.errors import (
    ConfigError,
    EngineError,
    ImageUnavailable,
    InvalidArgument,
    IsolationUnavailable,
    OmcpError,
    SandboxCreateFailed,
    SandboxLimitReached,
    SandboxNotFound,
    SandboxStillActive,
)
from omcp_py.hardening import (
    memory_guard,
    missing_limits,
    packages_volume,
    runtime_problem,
    sandbox_run_kwargs,
)
from omcp_py.images import ImagePuller, Progress, fix_for_missing
from omcp_py.installer import Installer, RawInstall
from omcp_py.models import (
    CreateSandboxResult,
    ExecutionResult,
    FigureInfo,
    InstallResult,
    ListFilesResult,
    ListSandboxesResult,
    RemoveSandboxResult,
    ResetStateResult,
    SandboxInfo,
    UploadResult,
    utc_iso,
)
from omcp_py.ownership import Owner
from omcp_py.packages import explain_failure, parse_requirements, pip_arguments
from omcp_py.pool import WarmPool
from omcp_py.runner.client import RawExecution, RunnerConnection, RunnerGone

log = logging.getLogger(__name__)

T = TypeVar("T")
_ID = re.compile(r"^[0-9a-f]{12}$")
_EXPIRED_REMEMBERED = 1000


@dataclass
class Execution:
    """What execute() returns: the tool result, and the figures that go with it."""

    result: ExecutionResult
    figures: list[Figure] = field(default_factory=list)


@dataclass
class Sandbox:
    """What the server remembers of one of its sandboxes."""

    id: str
    container_id: str
    created: float
    timeout: int
    stateful: bool = False
    runner: RunnerConnection | None = None  # the attached stdin/stdout of its PID 1
    last_used: float = 0.0
    active: int = 0  # executions and installs under way
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    install_lock: anyio.Lock = field(default_factory=anyio.Lock)
    packages_ready: bool = False  # its package volume belongs to the sandbox user

    @property
    def busy(self) -> bool:
        return self.active > 0

    @property
    def volume(self) -> str:
        return packages_volume(self.id)

    def idle_seconds(self, now: float) -> float:
        return 0.0 if self.busy else max(0.0, now - self.last_used)

    def expired(self, now: float) -> bool:
        return not self.busy and self.idle_seconds(now) >= self.timeout


@dataclass(frozen=True)
class ContainerRecord:
    """A sandbox container as the engine lists it."""

    id: str
    name: str
    labels: dict[str, str]
    running: bool

    @property
    def is_installer(self) -> bool:
        return self.labels.get(ownership.ROLE) == "installer"


class SandboxManager:
    """Creates, runs code in, lists and removes the sandboxes of one server."""

    def __init__(self, config: SandboxConfig, owner: Owner | None = None) -> None:
        """Prepare the manager; nothing touches Docker until it is used.

        Args:
            config: the server's settings.
            owner: this server's identity on its containers (default: this process).
        """
        self.config = config
        self.owner = owner or Owner.current()
        self.engine = Engine(config.sandbox_base_url, config.docker_timeout)
        self._sandboxes: dict[str, Sandbox] = {}
        # Ids of sandboxes being created: they hold a slot, and reconciliation must not
        # mistake their container (created, not yet started) for a stopped one.
        self._creating: set[str] = set()
        # Sandboxes the reaper removed (id: when it expired, its timeout), so that a
        # later call says it expired instead of answering like a typo. Bounded.
        self._expired: dict[str, tuple[float, int]] = {}
        self._closing = False
        self._checked_client: Any = None
        self.images = ImagePuller()
        self._exec_limiter: anyio.CapacityLimiter | None = None
        self._control_limiter: anyio.CapacityLimiter | None = None
        self._install_limiter: anyio.CapacityLimiter | None = None
        self.pool = WarmPool(
            config.sandbox_pool_size,
            make=lambda sandbox_id: self._control(self._create_container, sandbox_id),
            headroom=lambda: self._containers() < config.max_sandboxes,
            new_id=_new_id,
        )

    # -- lifecycle ---------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SandboxManager]:
        """Run the reaper while the server runs; remove our sandboxes at the end.

        Yields:
            This manager.
        """
        # One thread per sandbox can sit in a long execution; control calls
        # (create, list, remove) have their own threads so they never queue behind it.
        self._exec_limiter = anyio.CapacityLimiter(self.config.max_sandboxes + 2)
        self._control_limiter = anyio.CapacityLimiter(8)
        # Installs wait on pip for up to MAX_INSTALL_TIMEOUT: their own threads.
        self._install_limiter = anyio.CapacityLimiter(self.config.max_sandboxes)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._reaper)
            # Filled in the background: initialize never waits for it.
            tg.start_soon(self.pool.fill)
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await self.shutdown()

    async def shutdown(self) -> None:
        """Remove every sandbox this server owns (on the engine, not only in the cache)."""
        self._closing = True
        self._sandboxes.clear()
        self.pool.clear()
        try:
            containers = await self._control(
                self._list_containers, {ownership.OWNER: self.owner.instance}
            )
        except Exception as exc:  # the engine may be gone at exit; say so and leave
            log.warning("could not remove this server's sandboxes at exit: %s", exc)
            return
        async with anyio.create_task_group() as tg:
            for container in containers:
                tg.start_soon(self._remove_quietly, container.id)
        try:
            mine = {ownership.OWNER: self.owner.instance}
            for volume, _ in await self._control(self._list_volumes, mine):
                await self._control(self._remove_volume, volume)
        except Exception as exc:
            log.warning("could not remove this server's package volumes at exit: %s", exc)
        sandboxes = sum(not c.is_installer for c in containers)
        log.info("removed %d sandbox(es) at exit", sandboxes)
        self.engine.close()

    async def _remove_quietly(self, container_id: str) -> None:
        try:
            await self._control(self._remove_container, container_id)
        except Exception as exc:  # one failure must not stop the other removals
            log.warning("could not remove sandbox container %s: %s", container_id[:12], exc)

    async def _reaper(self) -> None:
        # At start, in the background (initialize never waits on Docker): say at once
        # when the engine would drop a limit; every create_sandbox refuses it too.
        try:
            await self._control(self._verify_engine)
        except IsolationUnavailable as exc:
            log.error("%s", exc)
        except Exception as exc:  # engine down: the tools say so when they are called
            log.debug("engine check at start failed: %s", exc)
        while True:
            try:
                await self.reap()
            except Exception as exc:  # a sweep that fails is retried at the next one
                log.debug("reaper sweep failed: %s", exc)
            await anyio.sleep(self.config.reaper_interval)

    async def reap(self) -> None:
        """Remove our sandboxes idle past their timeout, and orphans of dead servers."""
        await self._reconcile()
        for sandbox in list(self._sandboxes.values()):
            # Checked right before the drop (no await between): a run that started
            # during an earlier removal keeps its sandbox.
            now = time.time()
            if not sandbox.expired(now):
                continue
            self._forget(sandbox.id)
            self._expired[sandbox.id] = (sandbox.last_used + sandbox.timeout, sandbox.timeout)
            while len(self._expired) > _EXPIRED_REMEMBERED:
                del self._expired[next(iter(self._expired))]
            log.info("sandbox %s idle for %.0f s: removing it", sandbox.id, now - sandbox.last_used)
            await self._control(self._destroy, sandbox.id, sandbox.container_id)
        orphans = await self._control(self._orphans)
        for container in orphans:
            log.info("removing orphan container %s of a server that is gone", container.name)
            await self._control(self._remove_container, container.id)
        await self._sweep_volumes()

    async def _sweep_volumes(self) -> None:
        """Remove package volumes whose sandbox is gone (ours, or of dead servers)."""
        for volume, labels in await self._control(self._list_volumes, {}):
            if labels.get(ownership.OWNER) == self.owner.instance:
                # Listed after it was made: it belongs to a sandbox in the cache or
                # being created, unless that sandbox is gone.
                sandbox_id = labels.get(ownership.SANDBOX_ID, "")
                if sandbox_id in self._sandboxes or sandbox_id in self._creating:
                    continue
                if sandbox_id in self.pool.ids():
                    continue
            elif not self.owner.is_orphan(labels):
                continue
            log.info("removing package volume %s: its sandbox is gone", volume)
            await self._control(self._remove_volume, volume)

    # -- tools -------------------------------------------------------------------------

    async def create(
        self, timeout: int, stateful: bool = False, progress: Progress | None = None
    ) -> CreateSandboxResult:
        """Hand over a hardened sandbox: a ready one from the pool, or a new one.

        Args:
            timeout: idle seconds before the sandbox expires.
            stateful: its executions share one interpreter (variables survive).
            progress: called from a worker thread about every second while the image
                is being pulled (its first use on this engine).

        Returns:
            The new sandbox's id and timestamps.

        Raises:
            SandboxLimitReached: MAX_SANDBOXES sandboxes exist already.
            SandboxCreateFailed: the engine could not create or start it.
            ImageUnavailable: the image is not on the engine and could not be pulled.
            DockerUnavailable: the engine cannot be reached.
        """
        if self._full():
            await self._reconcile()  # sandboxes removed behind our back free their slots
        while True:
            if self._full():
                raise SandboxLimitReached(
                    f"Maximum number of sandboxes reached ({self.config.max_sandboxes}): remove "
                    f"one with remove_sandbox (list_sandboxes shows them), or raise MAX_SANDBOXES."
                )
            sandbox = self.pool.take()
            if sandbox is not None:
                # Removed behind our back (docker rm, a prune, an engine restart) since
                # it was made: dropped, and another one taken or made.
                # Counted as being created while it is checked: no await may leave it
                # uncounted, or concurrent creates would pass MAX_SANDBOXES.
                self._creating.add(sandbox.id)
                try:
                    alive = await self._control(self._alive, sandbox)
                except OmcpError:
                    self.pool.ready.insert(0, sandbox)  # the engine's fault, not the sandbox's
                    raise
                finally:
                    self._creating.discard(sandbox.id)
                if alive:
                    break
                log.info("pool sandbox %s is no longer running: dropped", sandbox.id)
                await self._remove_quietly(sandbox.container_id)
                continue
            if self._containers() >= self.config.max_sandboxes:
                # The last free slots are pool sandboxes still being made: wait for one.
                await self.pool.changed()
                continue
            sandbox_id = _new_id()
            self._creating.add(sandbox_id)  # no await between the checks and this reservation
            try:
                sandbox = await self._control(self._create_container, sandbox_id, progress)
            finally:
                self._creating.discard(sandbox_id)
            break
        now = time.time()
        sandbox.created = sandbox.last_used = now
        sandbox.timeout = timeout
        sandbox.stateful = stateful
        self._sandboxes[sandbox.id] = sandbox
        log.info("created sandbox %s (timeout %d s)", sandbox.id, timeout)
        return CreateSandboxResult(
            success=True,
            sandbox_id=sandbox.id,
            created_at=utc_iso(sandbox.created),
            last_used=utc_iso(sandbox.last_used),
            timeout=sandbox.timeout,
            stateful=sandbox.stateful,
        )

    async def list(self, include_inactive: bool = False) -> ListSandboxesResult:
        """List this server's sandboxes, as the engine has them.

        Args:
            include_inactive: also list sandboxes idle past their timeout.

        Returns:
            The sandboxes, oldest first.

        Raises:
            DockerUnavailable: the engine cannot be reached.
        """
        await self._reconcile()
        now = time.time()
        items = []
        for sandbox in sorted(self._sandboxes.values(), key=lambda s: s.created):
            expired = sandbox.expired(now)
            if expired and not include_inactive:
                continue
            items.append(
                SandboxInfo(
                    id=sandbox.id,
                    created_at=utc_iso(sandbox.created),
                    last_used=utc_iso(sandbox.last_used),
                    status="busy" if sandbox.busy else "idle" if expired else "active",
                    idle_seconds=round(sandbox.idle_seconds(now), 1),
                    timeout=sandbox.timeout,
                )
            )
        return ListSandboxesResult(success=True, sandboxes=items, count=len(items))

    async def remove(self, sandbox_id: str, force: bool = False) -> RemoveSandboxResult:
        """Remove a sandbox and everything in it.

        Args:
            sandbox_id: the sandbox to remove.
            force: remove it even while it runs code or an install (which then ends).

        Returns:
            What was done.

        Raises:
            SandboxNotFound: no sandbox of this server has that id.
            SandboxStillActive: it is running code or an install and force is False.
            DockerUnavailable: the engine cannot be reached.
        """
        sandbox = self._get(sandbox_id)
        if not force and sandbox.busy:
            raise SandboxStillActive(
                f"Sandbox {sandbox_id} is running code or an install right now: wait for it "
                f"to finish, or pass force=true to stop it and remove the sandbox."
            )
        self._forget(sandbox_id)
        existed = await self._control(self._destroy, sandbox_id, sandbox.container_id)
        if not existed:
            return RemoveSandboxResult(
                success=True,
                message=f"Sandbox {sandbox_id} was already gone (removed outside omcp_py).",
            )
        log.info("removed sandbox %s", sandbox_id)
        return RemoveSandboxResult(success=True, message=f"Sandbox {sandbox_id} removed.")

    async def execute(
        self, sandbox_id: str, code: str, timeout: int, progress: Progress | None = None
    ) -> Execution:
        """Run Python code in a sandbox, in a fresh process.

        If the caller is cancelled (the client sent ``notifications/cancelled``), the
        run is stopped in the sandbox at once and the cancellation goes on up.

        Args:
            sandbox_id: the sandbox to run in.
            code: Python source.
            timeout: seconds before every process of the run is killed.
            progress: told the seconds elapsed and the output so far, every few seconds.

        Returns:
            The outcome and its figures; code that raises or exits non-zero is a normal
            result.

        Raises:
            SandboxNotFound: no such sandbox, or it stopped or was removed.
            InvalidArgument: the code is too large or cannot be encoded.
            DockerUnavailable: the engine cannot be reached.
        """
        sandbox = self._get(sandbox_id)
        # Touched before any await: the reaper, which checks and drops with no await
        # in between, can no longer take this sandbox away from under the run.
        sandbox.last_used = time.time()
        payload = self._encode(code)
        if not 1 <= timeout <= self.config.max_execution_timeout:
            raise InvalidArgument(
                f"timeout={timeout} is out of range: use 1 to {self.config.max_execution_timeout} "
                f"seconds (MAX_EXECUTION_TIMEOUT)."
            )
        report = None
        if progress is not None:

            def report(elapsed: float, stdout: int, stderr: int) -> None:
                progress(
                    elapsed,
                    float(timeout),
                    f"running for {elapsed:.0f} s of at most {timeout} s; "
                    f"{stdout:,} bytes of stdout, {stderr:,} of stderr so far",
                )

        # One execution at a time per sandbox: cleaning up after a run kills every
        # process of the sandbox's user, so two runs must not share a sandbox.
        async with _busy(sandbox, sandbox.lock):
            try:
                raw = await self._cancellable(
                    self._exec_limiter,
                    timeout + 10,
                    lambda stop: self._execute_in(sandbox, payload, timeout, report, stop),
                )
            except OmcpError as exc:
                if self._sandboxes.get(sandbox_id) is not sandbox:
                    raise _removed_during_run(sandbox_id) from None
                if isinstance(exc, SandboxNotFound):
                    self._forget(sandbox_id)
                raise
        # remove_sandbox(force=True), or the engine, took it while the code ran.
        if self._sandboxes.get(sandbox_id) is not sandbox:
            raise _removed_during_run(sandbox_id)
        return Execution(self._result(raw, timeout, sandbox.stateful), raw.figures)

    async def reset_state(self, sandbox_id: str) -> ResetStateResult:
        """Drop the variables, imports and data of a stateful sandbox.

        Args:
            sandbox_id: a sandbox created with stateful=True.

        Returns:
            What was done; files in the sandbox stay.

        Raises:
            SandboxNotFound: no such sandbox.
            InvalidArgument: the sandbox is stateless (every run starts fresh already).
        """
        sandbox = self._get(sandbox_id)
        if not sandbox.stateful:
            raise InvalidArgument(
                f"Sandbox {sandbox_id} is stateless: every execution already starts fresh. "
                f"Create one with create_sandbox(stateful=true) to keep state between runs."
            )
        sandbox.last_used = time.time()
        async with _busy(sandbox, sandbox.lock):
            had_state = await self._run(self._exec_limiter, self._reset_in, sandbox)
        message = (
            "The interpreter was ended: the next execution starts with fresh state."
            if had_state
            else "There was no state to drop: the next execution starts fresh."
        )
        return ResetStateResult(success=True, message=message + " Files in /sandbox are kept.")

    async def install(
        self, sandbox_id: str, package: str, timeout: int, progress: Progress | None = None
    ) -> InstallResult:
        """Install packages into a sandbox, from an installer container.

        If the caller is cancelled, the installer container is killed at once and the
        cancellation goes on up.

        Args:
            sandbox_id: the sandbox whose package volume receives them.
            package: requirement specifiers separated by spaces.
            timeout: seconds before the installer and all its processes are killed.
            progress: told the seconds elapsed, every few seconds.

        Returns:
            The outcome; a failed install (unknown package, conflict, unreachable
            index, timeout) is a normal result with ``success: false``.

        Raises:
            SandboxNotFound: no such sandbox, or it was removed during the install.
            InvalidArgument: ``package`` is not a list of plain requirements.
            DockerUnavailable: the engine cannot be reached.
        """
        sandbox = self._get(sandbox_id)
        requirements = parse_requirements(package)
        if not 1 <= timeout <= self.config.max_install_timeout:
            raise InvalidArgument(
                f"timeout={timeout} is out of range: use 1 to {self.config.max_install_timeout} "
                f"seconds (MAX_INSTALL_TIMEOUT)."
            )
        sandbox.last_used = time.time()
        # Installs into one sandbox take turns (they share its volume); executions
        # and other sandboxes go on meanwhile.
        report = None
        if progress is not None:

            def report(elapsed: float) -> None:
                message = f"installing for {elapsed:.0f} s of at most {timeout} s"
                progress(elapsed, float(timeout), message)

        async with _busy(sandbox, sandbox.install_lock):
            try:
                raw = await self._cancellable(
                    self._install_limiter,
                    timeout + 30,
                    lambda stop: self._install_in(sandbox, requirements, timeout, report, stop),
                )
            except OmcpError:
                if self._sandboxes.get(sandbox_id) is not sandbox:
                    raise _removed_during_install(sandbox_id) from None
                raise
        if self._sandboxes.get(sandbox_id) is not sandbox or raw.vanished:
            raise _removed_during_install(sandbox_id)
        return self._install_result(raw, requirements, timeout)

    # -- files -------------------------------------------------------------------------

    async def upload(
        self,
        sandbox_id: str,
        path: str,
        text: str | None = None,
        content_base64: str | None = None,
    ) -> UploadResult:
        """Write a file into a sandbox (parent directories are made), replacing any file
        of that name.

        Args:
            sandbox_id: the sandbox.
            path: relative to /sandbox, or absolute under /sandbox or /tmp.
            text: the content as text (written as UTF-8); or
            content_base64: the content as base64.

        Returns:
            Where it is, its size and its SHA-256.

        Raises:
            SandboxNotFound: no such sandbox.
            FileRefused: the path leaves the sandbox's files, goes through a link, names
                a directory or a special file; the content is too large or the disk full.
            InvalidArgument: not exactly one of text and content_base64, or bad base64.
        """
        sandbox = self._get(sandbox_id)
        path = files.check_path(path)
        content = files.decode_upload(text, content_base64, self.config.max_upload_size)
        answer, _ = await self._file(sandbox, {"op": "put", "path": path, "max": 0}, content)
        return files.upload_result(answer, content)

    async def download(self, sandbox_id: str, path: str) -> files.Download:
        """Read a whole file of a sandbox.

        Args:
            sandbox_id: the sandbox.
            path: relative to /sandbox, or absolute under /sandbox or /tmp.

        Returns:
            Its description (text files carry their text) and its bytes.

        Raises:
            SandboxNotFound: no such sandbox.
            FileRefused: the path leaves the sandbox's files, goes through a link, is
                missing, a directory or a special file, or is over MAX_DOWNLOAD_SIZE.
        """
        sandbox = self._get(sandbox_id)
        request = {
            "op": "get",
            "path": files.check_path(path),
            # Nothing larger fits one result, whatever form it takes.
            "max": min(self.config.max_download_size, self.config.max_result_size),
        }
        answer, data = await self._file(sandbox, request)
        return files.download(answer, data)

    async def list_files(self, sandbox_id: str, path: str = "/sandbox") -> ListFilesResult:
        """List a directory of a sandbox, all the way down (links are shown, not followed).

        Args:
            sandbox_id: the sandbox.
            path: the directory: relative to /sandbox, or absolute under /sandbox or /tmp.

        Returns:
            Its entries with sizes, and the room left.

        Raises:
            SandboxNotFound: no such sandbox.
            FileRefused: the path leaves the sandbox's files, goes through a link, is
                missing or not a directory.
        """
        sandbox = self._get(sandbox_id)
        request = {"op": "list", "path": files.check_path(path), "max": 0}
        answer, _ = await self._file(sandbox, request)
        return files.listing(answer)

    async def _file(
        self, sandbox: Sandbox, request: dict[str, Any], content: bytes = b""
    ) -> tuple[dict[str, Any], bytes]:
        sandbox.last_used = time.time()
        # The runner takes one request at a time: a file waits for a run under way.
        async with _busy(sandbox, sandbox.lock):
            try:
                answer, data = await self._run(
                    self._exec_limiter,
                    self._with_runner,
                    sandbox,
                    lambda runner: runner.file_op(request, content),
                )
            except OmcpError:
                if self._sandboxes.get(sandbox.id) is not sandbox:
                    raise _removed_during_run(sandbox.id) from None
                raise
        if answer.get("error"):
            raise files.refusal(answer, self.config, request["op"])
        return answer, data

    # -- helpers on the event loop -----------------------------------------------------

    def _forget(self, sandbox_id: str) -> None:
        """Drop a sandbox from the cache, with its connection to the runner."""
        sandbox = self._sandboxes.pop(sandbox_id, None)
        if sandbox is not None and sandbox.runner is not None:
            sandbox.runner.close()

    def _full(self) -> bool:
        """No sandbox can be handed over: the limit counts sandboxes in use."""
        return len(self._sandboxes) + len(self._creating) >= self.config.max_sandboxes

    def _containers(self) -> int:
        """Sandbox containers this server has or is making, the pool's included."""
        pool = len(self.pool.ready) + len(self.pool.making)
        return len(self._sandboxes) + len(self._creating) + pool

    def _get(self, sandbox_id: str) -> Sandbox:
        sandbox = self._sandboxes.get(sandbox_id) if _ID.match(sandbox_id) else None
        if sandbox is None and sandbox_id in self._expired:
            when, timeout = self._expired[sandbox_id]
            raise SandboxNotFound(
                f"Sandbox {sandbox_id} expired at {utc_iso(when)}: it was idle for its "
                f"timeout ({timeout} s) and was removed with its files. Create a new one with "
                f"create_sandbox (a larger timeout keeps it longer)."
            )
        if sandbox is None:
            shown = sandbox_id if len(sandbox_id) <= 64 else sandbox_id[:64] + "..."
            raise SandboxNotFound(
                f"No sandbox {shown!r} on this server: create one with create_sandbox, "
                f"or call list_sandboxes for the ids that exist."
            )
        return sandbox

    def _encode(self, code: str) -> bytes:
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
        if len(payload) > self.config.max_code_size:
            raise InvalidArgument(
                f"code is {len(payload):,} bytes; the limit is {self.config.max_code_size:,} "
                f"(MAX_CODE_SIZE): send less, or write data to a file in a few steps."
            )
        return payload

    def _install_result(
        self, raw: RawInstall, requirements: list[str], timeout: int
    ) -> InstallResult:
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
                f"(SANDBOX_MEMORY={format_size(self.config.sandbox_memory)}); nothing new "
                f"was installed."
            )
        elif raw.exit_code != 0:
            error = explain_failure(raw.log, self.config)
        elif not raw.installed:
            error = "The installer reported success but the sandbox holds no package."
        output = raw.log
        return InstallResult(
            success=error is None,
            output=output,
            error=error,
            exit_code=raw.exit_code,
            requested=requirements,
            installed=raw.installed,
            timed_out=raw.timed_out,
            duration_ms=raw.duration_ms,
        )

    def _result(self, raw: RawExecution, timeout: int, stateful: bool) -> ExecutionResult:
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
                f"(SANDBOX_MEMORY={format_size(self.config.sandbox_memory)})."
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
                f"{format_size(self.config.image_budget)} (base64) together. Save them with "
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

    async def _reconcile(self) -> None:
        """Make the cache agree with the engine: drop what stopped or vanished."""
        # Only sandboxes known before the listing can be judged by it: one created while
        # the listing was in flight is missing from it, not gone.
        known = set(self._sandboxes)
        known_pool = {s.id for s in self.pool.ready}
        # Likewise a container still being made when the engine listed it shows as not
        # running, even if it runs by the time the listing is read.
        in_flight = self._creating | self.pool.making
        containers = await self._control(
            self._list_containers, {ownership.OWNER: self.owner.instance}
        )
        in_flight |= self._creating | self.pool.making  # and those begun since
        running = {}
        for container in containers:
            if container.is_installer:
                continue  # an install's own, removed when the install ends
            sandbox_id = container.labels.get(ownership.SANDBOX_ID)
            if container.running:
                running[sandbox_id] = container
            elif sandbox_id in in_flight:
                continue
            else:
                log.info("sandbox container %s has stopped: removing it", container.name)
                await self._control(self._destroy, sandbox_id or "", container.id)
        for sandbox_id in known & set(self._sandboxes):
            if sandbox_id not in running:
                log.info("sandbox %s vanished from the engine: forgetting it", sandbox_id)
                self._forget(sandbox_id)
        self.pool.drop(known_pool - set(running))

    async def _control(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._run(self._control_limiter, fn, *args)

    async def _run(self, limiter: Any, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(partial(fn, *args), limiter=limiter)

    async def _cancellable(self, limiter: Any, longest: float, work: Callable[[Stop], T]) -> T:
        """Run ``work`` in a worker thread; if the caller is cancelled meanwhile, stop it
        and wait for it to end before the cancellation goes on.

        Args:
            limiter: the worker threads it may use.
            longest: seconds the work can take at most once stopped (its own deadline).
            work: blocking; registers on the Stop it gets how it is stopped.
        """
        stop = Stop()
        ended = threading.Event()

        def run() -> T:
            try:
                return work(stop)
            finally:
                ended.set()

        try:
            return await anyio.to_thread.run_sync(run, limiter=limiter, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            # The sandbox stays locked until the work has really ended: the next
            # request must not meet the end of this one on the runner's connection.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stop.stop)  # it may call Docker
                await anyio.to_thread.run_sync(ended.wait, longest)
            raise

    # -- blocking Docker calls (worker threads) ----------------------------------------

    def _verify_engine(self) -> None:
        self._check_isolation(self.engine.client())

    def _check_isolation(self, client: Any) -> None:
        # Once per connection: a reconnect may reach another engine.
        if self._checked_client is client:
            return
        with self.engine.errors():
            info = client.info()
        missing = missing_limits(info)
        runtime = runtime_problem(info, self.config.sandbox_runtime)
        if runtime:
            raise IsolationUnavailable(f"The Docker engine at {self.engine.url}: {runtime}")
        if missing:
            raise IsolationUnavailable(
                f"The Docker engine at {self.engine.url} cannot enforce the "
                f"{', '.join(missing)}; omcp_py does not run sandboxes without it. Use an engine "
                f"with the cgroup controllers enabled (see `docker info` warnings)."
            )
        self._checked_client = client

    def _create_container(self, sandbox_id: str, progress: Progress | None = None) -> Sandbox:
        import docker

        client = self.engine.client()
        self._check_isolation(client)
        with self.engine.errors():
            self.images.ensure(client, self.config.docker_image, progress)
        now = time.time()
        labels = self.owner.labels() | {
            ownership.SANDBOX_ID: sandbox_id,
            ownership.CREATED: utc_iso(now),
            ownership.ROLE: "sandbox",
        }
        kwargs = sandbox_run_kwargs(self.config, labels, packages_volume(sandbox_id))
        with self.engine.errors():
            try:
                try:
                    container = client.containers.create(name=f"omcp-{sandbox_id}", **kwargs)
                except docker.errors.ImageNotFound:
                    # Removed from the engine since it was last seen there: fetch it again.
                    self.images.forget(self.config.docker_image)
                    self.images.ensure(client, self.config.docker_image, progress)
                    container = client.containers.create(name=f"omcp-{sandbox_id}", **kwargs)
            except docker.errors.APIError as exc:
                raise SandboxCreateFailed(
                    f"The engine refused to create the sandbox: {exc.explanation or exc}"
                ) from None
            runner = RunnerConnection(client.api, container.id)
            try:
                container.start()
                runner.connect()
            except docker.errors.APIError as exc:
                runner.close()
                self._destroy(sandbox_id, container.id)
                raise SandboxCreateFailed(
                    f"The sandbox container did not start: {exc.explanation or exc}. "
                    f"DOCKER_IMAGE must have python3 on PATH."
                ) from None
        if self._closing:  # the server shut down while this call was in flight
            runner.close()
            self._destroy(sandbox_id, container.id)
            raise SandboxCreateFailed("The server is shutting down.")
        return Sandbox(
            id=sandbox_id,
            container_id=container.id,
            created=now,
            timeout=self.config.sandbox_timeout,
            last_used=now,
            runner=runner,
        )

    def _destroy(self, sandbox_id: str, container_id: str) -> bool:
        """Remove a sandbox's container, any installer of it, then its package volume.

        Returns:
            False when the sandbox container was already gone.
        """
        if sandbox_id:
            labels = {ownership.SANDBOX_ID: sandbox_id, ownership.ROLE: "installer"}
            for installer in self._list_containers(labels):
                self._remove_container(installer.id)
        existed = self._remove_container(container_id)
        if sandbox_id:
            self._remove_volume(packages_volume(sandbox_id))
        return existed

    def _remove_volume(self, name: str) -> None:
        import docker

        client = self.engine.client()
        with self.engine.errors():
            try:
                client.api.remove_volume(name)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # in use: the next sweep takes it
                    raise
                log.debug("package volume %s is still in use: %s", name, exc.explanation)

    def _list_volumes(self, labels: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
        """(name, labels) of our package volumes that also carry ``labels``."""
        client = self.engine.client()
        with self.engine.errors():
            answer = client.api.volumes(filters={"label": _label_filter(labels)})
        return [(v["Name"], v.get("Labels") or {}) for v in answer.get("Volumes") or []]

    def _remove_container(self, container_id: str) -> bool:
        """Force-remove a container; False when it was already gone."""
        import docker

        client = self.engine.client()
        with self.engine.errors():
            try:
                client.api.remove_container(container_id, force=True, v=True)
            except docker.errors.NotFound:
                return False
            except docker.errors.APIError as exc:
                if exc.status_code == 409:  # removal already in progress
                    return True
                raise
        return True

    def _list_containers(self, labels: dict[str, str]) -> list[ContainerRecord]:
        client = self.engine.client()
        with self.engine.errors():
            rows = client.api.containers(all=True, filters={"label": _label_filter(labels)})
        return [
            ContainerRecord(
                id=row["Id"],
                name=(row.get("Names") or ["?"])[0].lstrip("/"),
                labels=row.get("Labels") or {},
                running=row.get("State") == "running",
            )
            for row in rows
        ]

    def _orphans(self) -> list[ContainerRecord]:
        return [c for c in self._list_containers({}) if self.owner.is_orphan(c.labels)]

    def _execute_in(
        self,
        sandbox: Sandbox,
        payload: bytes,
        timeout: int,
        progress: Callable[[float, int, int], None] | None = None,
        stop: Stop | None = None,
    ) -> RawExecution:
        limit, guard = self.config.output_limit, memory_guard(self.config)
        images = self.config.image_budget * 3 // 4  # the budget counts base64
        return self._with_runner(
            sandbox,
            lambda runner: runner.execute(
                payload, timeout, limit, sandbox.stateful, guard, images, progress, stop
            ),
        )

    def _reset_in(self, sandbox: Sandbox) -> bool:
        return self._with_runner(sandbox, lambda runner: runner.reset())

    def _with_runner(self, sandbox: Sandbox, call: Callable[[RunnerConnection], T]) -> T:
        """Call the sandbox's runner; a stopped sandbox is dropped and reported."""
        import docker

        client = self.engine.client()
        if sandbox.runner is None or sandbox.runner.api is not client.api:
            # First use since a reconnect to the engine: attach anew.
            if sandbox.runner is not None:
                sandbox.runner.close()
            sandbox.runner = RunnerConnection(client.api, sandbox.container_id)
        with self.engine.errors():
            try:
                return call(sandbox.runner)
            except RunnerGone as exc:
                state = self._container_state(sandbox.container_id)
                if state.get("Running"):
                    raise EngineError(
                        f"The connection to sandbox {sandbox.id} broke ({exc}); the result of "
                        f"this call is lost. The sandbox is still there: try again."
                    ) from None
            except docker.errors.NotFound:
                state = {}
            except docker.errors.APIError as exc:
                if exc.status_code != 409 and "is not running" not in str(exc.explanation):
                    raise
                state = self._container_state(sandbox.container_id)
            self._destroy(sandbox.id, sandbox.container_id)
        raise self._gone(sandbox, state)

    def _gone(self, sandbox: Sandbox, state: dict[str, Any]) -> SandboxNotFound:
        """Why a sandbox's container no longer answers, from its last engine state."""
        if state.get("OOMKilled"):
            runtime = self.config.sandbox_runtime or "the engine's default runtime"
            return SandboxNotFound(
                f"Sandbox {sandbox.id} was killed because it ran out of memory "
                f"(SANDBOX_MEMORY={format_size(self.config.sandbox_memory)}); under {runtime} "
                f"that ends the whole sandbox, and its files and state are lost. Create a new "
                f"sandbox, and use less memory at once (or raise SANDBOX_MEMORY)."
            )
        return SandboxNotFound(
            f"Sandbox {sandbox.id} has stopped or was removed outside omcp_py: "
            f"create a new one with create_sandbox."
        )

    def _alive(self, sandbox: Sandbox) -> bool:
        """True when the container runs and its runner's stream is open (blocking).

        Raises:
            DockerUnavailable: the engine cannot be reached.
        """
        with self.engine.errors():
            running = bool(self._container_state(sandbox.container_id).get("Running"))
        return running and (sandbox.runner is None or sandbox.runner.open())

    def _container_state(self, container_id: str) -> dict[str, Any]:
        """The container's State as the engine has it; empty when it is gone."""
        import docker

        try:
            return self.engine.client().api.inspect_container(container_id)["State"] or {}
        except docker.errors.NotFound:
            return {}

    def _install_in(
        self,
        sandbox: Sandbox,
        requirements: list[str],
        timeout: int,
        progress: Callable[[float], None] | None = None,
        stop: Stop | None = None,
    ) -> RawInstall:
        import docker

        client = self.engine.client()
        self._check_isolation(client)
        installer = Installer(client, self.config)
        labels = self.owner.labels() | {
            ownership.SANDBOX_ID: sandbox.id,
            ownership.ROLE: "installer",
        }
        with self.engine.errors():
            try:
                raw = installer.install(
                    sandbox.volume,
                    labels,
                    pip_arguments(self.config, requirements),
                    timeout,
                    prepare=not sandbox.packages_ready,
                    wanted=lambda: self._sandboxes.get(sandbox.id) is sandbox,
                    progress=progress,
                    stop=stop,
                )
            except docker.errors.ImageNotFound:
                self.images.forget(self.config.docker_image)
                raise ImageUnavailable(
                    f"Docker image {self.config.docker_image!r} is gone from the engine, and the "
                    f"installer runs from it: {fix_for_missing(self.config.docker_image)}."
                ) from None
            except docker.errors.APIError as exc:
                explanation = str(exc.explanation or exc)
                if "bind source path does not exist" in explanation:
                    raise ConfigError(
                        f"The installer cannot start: {explanation}. PACKAGE_CA_BUNDLE and "
                        f"PACKAGE_WHEELHOUSE must be paths that exist on the Docker host."
                    ) from None
                if "network" in explanation and "not found" in explanation:
                    raise ConfigError(
                        f"The installer cannot start: {explanation}. Set INSTALLER_NETWORK to "
                        f"a network of the engine (docker network ls)."
                    ) from None
                raise
        if self._sandboxes.get(sandbox.id) is not sandbox:
            # Removed during the install: an installer container made meanwhile can
            # have created the volume again after the removal took it.
            self._remove_volume(sandbox.volume)
        sandbox.packages_ready = sandbox.packages_ready or raw.prepared
        return raw


def _label_filter(labels: dict[str, str]) -> list[str]:
    """An engine label filter: ours (managed-by), and carrying ``labels``."""
    return [f"{ownership.MANAGED_BY}=omcp_py", *(f"{k}={v}" for k, v in labels.items())]


@asynccontextmanager
async def _busy(sandbox: Sandbox, lock: anyio.Lock) -> AsyncIterator[None]:
    """Hold ``lock`` and mark the sandbox in use: the reaper never takes a busy one."""
    async with lock:
        sandbox.active += 1
        try:
            yield
        finally:
            sandbox.active -= 1
            sandbox.last_used = time.time()


def _removed_during_run(sandbox_id: str) -> SandboxNotFound:
    return SandboxNotFound(
        f"Sandbox {sandbox_id} was removed while the code was running; its output is lost. "
        f"Create a new one with create_sandbox."
    )


def _removed_during_install(sandbox_id: str) -> SandboxNotFound:
    return SandboxNotFound(
        f"Sandbox {sandbox_id} was removed during the install. "
        f"Create a new one with create_sandbox."
    )


def _new_id() -> str:
    import uuid

    return uuid.uuid4().hex[:12]
