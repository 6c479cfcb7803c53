"""SandboxManager: the tool verbs over this server's sandboxes.

Each verb checks its arguments, takes the sandbox's lock, hands the blocking work to
a worker thread (``workers``) that calls the engine (``containers``), and shapes the
result (``outcomes``). The registry of sandboxes (``sandboxes``) is bookkeeping on the
event loop; ``housekeeping`` keeps it in agreement with the engine, which is the
source of truth for which sandboxes exist. Files go through ``sandbox_files``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from omcp_py import outcomes, principals
from omcp_py.config import SandboxConfig
from omcp_py.containers import Containers
from omcp_py.egress import sandbox_hosts
from omcp_py.errors import (
    InvalidArgument,
    OmcpError,
    SandboxNotFound,
    SandboxStillActive,
)
from omcp_py.housekeeping import Housekeeper
from omcp_py.images import Progress
from omcp_py.models import (
    CreateSandboxResult,
    InstallResult,
    ListSandboxesResult,
    RemoveSandboxResult,
    ResetStateResult,
    SandboxInfo,
    utc_iso,
)
from omcp_py.ownership import Owner
from omcp_py.packages import parse_requirements
from omcp_py.pool import WarmPool
from omcp_py.sandbox_files import SandboxFiles
from omcp_py.sandboxes import Execution, Registry, Sandbox, busy, new_id
from omcp_py.workers import Workers

log = logging.getLogger(__name__)


class SandboxManager:
    """Creates, runs code in, lists and removes the sandboxes of one server."""

    def __init__(self, config: SandboxConfig, owner: Owner | None = None) -> None:
        """Prepare the manager; nothing touches Docker until it is used.

        Args:
            config: the server's settings.
            owner: this server's identity on its containers (default: this process).
        """
        self.config = config
        self.registry = Registry(config.max_sandboxes)
        self.containers = Containers(config, owner or Owner.current(), self.registry.is_current)
        self.workers = Workers(config.max_sandboxes)
        self.pool = WarmPool(
            config.sandbox_pool_size,
            make=lambda sandbox_id: self.workers.control(self.containers.create, sandbox_id),
            headroom=lambda: self._containers() < config.max_sandboxes,
            new_id=new_id,
        )
        self.housekeeper = Housekeeper(
            config, self.registry, self.pool, self.containers, self.workers
        )
        self.files = SandboxFiles(config, self.registry, self.containers, self.workers)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[SandboxManager]:
        """Run the reaper and fill the pool while the server runs; remove our sandboxes
        at the end.

        Yields:
            This manager.
        """
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.housekeeper.reaper)
            tg.start_soon(self.pool.fill)  # in the background: initialize never waits
            try:
                yield self
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await self.housekeeper.shutdown()

    def _containers(self) -> int:
        """Sandbox containers this server has or is making, the pool's included."""
        pool = len(self.pool.ready) + len(self.pool.making)
        return len(self.registry) + len(self.registry.creating) + pool

    async def create(
        self,
        timeout: int,
        stateful: bool = False,
        progress: Progress | None = None,
        allow_hosts: list[str] | None = None,
    ) -> CreateSandboxResult:
        """Hand over a hardened sandbox: a ready one from the pool, or a new one.

        Args:
            timeout: idle seconds before the sandbox expires.
            stateful: its executions share one interpreter (variables survive).
            progress: called from a worker thread about every second while the image
                is being pulled (its first use on this engine).
            allow_hosts: host:port pairs of SANDBOX_ALLOWED_HOSTS (a new sandbox, filtered).

        Returns:
            The new sandbox's id and timestamps.

        Raises:
            SandboxLimitReached: MAX_SANDBOXES sandboxes exist already.
            SandboxCreateFailed: the engine could not create or start it.
            ImageUnavailable: the image is not on the engine and could not be pulled.
            DockerUnavailable: the engine cannot be reached.
        """
        allow = tuple(sandbox_hosts(allow_hosts or [], self.config))
        if self.registry.full():
            await self.housekeeper.reconcile()  # removed behind our back: slots free
        sandbox = await self._hand_over(progress, allow)
        sandbox.principal = principals.current()
        sandbox.created = sandbox.last_used = time.time()
        sandbox.timeout = timeout
        sandbox.stateful = stateful
        self.registry.add(sandbox)
        log.info("created sandbox %s (timeout %d s)", sandbox.id, timeout)
        return CreateSandboxResult(
            success=True,
            sandbox_id=sandbox.id,
            created_at=utc_iso(sandbox.created),
            last_used=utc_iso(sandbox.last_used),
            timeout=sandbox.timeout,
            stateful=sandbox.stateful,
            allowed_hosts=list(allow),
        )

    async def _hand_over(self, progress: Progress | None, allow: tuple[str, ...]) -> Sandbox:
        """A sandbox from the pool (none has a network) or a new one, within MAX_SANDBOXES."""
        while True:
            full, held = self.registry.full(), self.registry.held_by_current()
            outcomes.check_room(self.config.max_sandboxes, full, held, self.config)
            sandbox = None if allow else self.pool.take()
            if sandbox is not None:
                # Removed behind our back (docker rm, a prune, an engine restart) since it
                # was made: dropped, and another one taken or made. Counted as being
                # created while it is checked, so concurrent creates stay within the limit.
                with self.registry.reserving(sandbox.id):
                    try:
                        alive = await self.workers.control(self.containers.alive, sandbox)
                    except OmcpError:
                        self.pool.ready.insert(0, sandbox)  # the engine's fault, not its own
                        raise
                if alive:
                    return sandbox
                log.info("pool sandbox %s is no longer running: dropped", sandbox.id)
                await self.housekeeper.remove_quietly(sandbox.container_id)
                continue
            if self._containers() >= self.config.max_sandboxes:
                # The last free slots are pool sandboxes still being made: wait for one.
                await self.pool.changed()
                continue
            sandbox_id = new_id()
            with self.registry.reserving(sandbox_id):  # no await since the checks
                return await self.workers.control(
                    self.containers.create, sandbox_id, progress, allow, principals.current()
                )

    async def list(self, include_inactive: bool = False) -> ListSandboxesResult:
        """This server's sandboxes as the engine has them, oldest first; those idle past
        their timeout only with ``include_inactive``. DockerUnavailable without an engine."""
        await self.housekeeper.reconcile()
        now = time.time()
        items = []
        for sandbox in sorted(self.registry.mine(), key=lambda s: s.created):
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
        """Remove a sandbox and everything in it; with ``force`` even while it runs code or
        an install (which then ends).

        Raises:
            SandboxNotFound: no sandbox of this server has that id.
            SandboxStillActive: it is running code or an install and force is False.
            DockerUnavailable: the engine cannot be reached.
        """
        sandbox = self.registry.get(sandbox_id)
        if not force and sandbox.busy:
            raise SandboxStillActive(
                f"Sandbox {sandbox_id} is running code or an install right now: wait for it "
                f"to finish, or pass force=true to stop it and remove the sandbox."
            )
        self.registry.forget(sandbox_id)
        existed = await self.workers.control(
            self.containers.destroy, sandbox_id, sandbox.container_id
        )
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
        """Run Python code in a sandbox, in a fresh process (or its stateful interpreter).

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
        sandbox = self.registry.get(sandbox_id)
        # Touched before any await: the reaper, which checks and drops with no await
        # in between, can no longer take this sandbox away from under the run.
        sandbox.touch()
        payload = outcomes.encode_code(code, self.config.max_code_size)
        outcomes.check_run_timeout(timeout, self.config.max_execution_timeout)
        report = outcomes.run_progress(progress, timeout)
        # One execution at a time per sandbox: cleaning up after a run kills every
        # process of the sandbox's user, so two runs must not share a sandbox.
        async with busy(sandbox, sandbox.lock):
            try:
                raw = await self.workers.cancellable(
                    self.workers.executions,
                    timeout + 10,
                    lambda stop: self.containers.execute(
                        sandbox, payload, timeout=timeout, progress=report, stop=stop
                    ),
                )
            except OmcpError as exc:
                if not self.registry.is_current(sandbox):
                    raise outcomes.removed_during_run(sandbox_id) from None
                if isinstance(exc, SandboxNotFound):
                    self.registry.forget(sandbox_id)
                raise
        # remove_sandbox(force=True), or the engine, took it while the code ran.
        if not self.registry.is_current(sandbox):
            raise outcomes.removed_during_run(sandbox_id)
        result = outcomes.execution_result(
            raw, timeout=timeout, stateful=sandbox.stateful, config=self.config
        )
        return Execution(result, raw.figures)

    async def reset_state(self, sandbox_id: str) -> ResetStateResult:
        """Drop the variables, imports and data of a stateful sandbox; its files stay.

        Raises:
            SandboxNotFound: no such sandbox.
            InvalidArgument: the sandbox is stateless (every run starts fresh already).
        """
        sandbox = self.registry.get(sandbox_id)
        if not sandbox.stateful:
            raise InvalidArgument(
                f"Sandbox {sandbox_id} is stateless: every execution already starts fresh. "
                f"Create one with create_sandbox(stateful=true) to keep state between runs."
            )
        sandbox.touch()
        async with busy(sandbox, sandbox.lock):
            had_state = await self.workers.run(
                self.workers.executions, self.containers.reset, sandbox
            )
        message = (
            "The interpreter was ended: the next execution starts with fresh state."
            if had_state
            else "There was no state to drop: the next execution starts fresh."
        )
        return ResetStateResult(success=True, message=message + " Files in /sandbox are kept.")

    async def install(
        self, sandbox_id: str, package: str, timeout: int, progress: Progress | None = None
    ) -> InstallResult:
        """Install packages into a sandbox, from an installer container. If the caller is
        cancelled, the installer is killed at once and the cancellation goes on up.

        Args:
            sandbox_id: the sandbox whose package volume receives them.
            package: requirement specifiers separated by spaces.
            timeout: seconds before the installer and all its processes are killed.
            progress: told the seconds elapsed, every few seconds.

        Returns:
            The outcome; a failed install is a normal result with ``success: false``.

        Raises:
            SandboxNotFound: no such sandbox, or it was removed during the install.
            InvalidArgument: ``package`` is not a list of plain requirements.
            DockerUnavailable: the engine cannot be reached.
        """
        sandbox = self.registry.get(sandbox_id)
        requirements = parse_requirements(package)
        outcomes.check_install_timeout(timeout, self.config.max_install_timeout)
        sandbox.touch()
        report = outcomes.install_progress(progress, timeout)
        # Installs into one sandbox take turns (they share its volume); executions and
        # other sandboxes go on meanwhile.
        async with busy(sandbox, sandbox.install_lock):
            try:
                raw = await self.workers.cancellable(
                    self.workers.installs,
                    timeout + 30,
                    lambda stop: self.containers.install(
                        sandbox, requirements, timeout=timeout, progress=report, stop=stop
                    ),
                )
            except OmcpError:
                if not self.registry.is_current(sandbox):
                    raise outcomes.removed_during_install(sandbox_id) from None
                raise
        if not self.registry.is_current(sandbox) or raw.vanished:
            raise outcomes.removed_during_install(sandbox_id)
        return outcomes.install_result(
            raw, requirements=requirements, timeout=timeout, config=self.config
        )
