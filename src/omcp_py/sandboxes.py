"""The sandboxes of this server as it remembers them: the records, and the registry.

The engine is the source of truth for which sandboxes exist (labels mark ours); the
registry is a cache of what the engine does not store (last use, locks, the runner
connection), reconciled with the engine by ``housekeeping``. Pure bookkeeping on the
event loop: nothing here calls Docker.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from omcp_py import ownership
from omcp_py.boundary import Figure
from omcp_py.errors import SandboxNotFound
from omcp_py.hardening import packages_volume
from omcp_py.models import ExecutionResult, utc_iso

if TYPE_CHECKING:
    from omcp_py.runner.client import RunnerConnection

_ID = re.compile(r"^[0-9a-f]{12}$")
# Sandboxes the reaper removed, remembered so that a later call says it expired.
EXPIRED_REMEMBERED = 1000


def new_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class Execution:
    """What an execution returns: the tool result, and the figures that go with it."""

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

    def touch(self) -> None:
        """Mark it used now: its idle time starts again."""
        self.last_used = time.time()

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
    def is_helper(self) -> bool:
        """An installer or the egress filter: a container that is no sandbox."""
        return self.labels.get(ownership.ROLE) in ("installer", "egress")


class Registry:
    """The sandboxes handed over by this server, those being made, and those expired."""

    def __init__(self, limit: int) -> None:
        """Args:
        limit: MAX_SANDBOXES, counted over sandboxes in use and being created.
        """
        self.limit = limit
        self._sandboxes: dict[str, Sandbox] = {}
        # Ids of sandboxes being created: they hold a slot, and reconciliation must not
        # mistake their container (created, not yet started) for a stopped one.
        self.creating: set[str] = set()
        # id: (when it expired, its timeout); oldest first, bounded.
        self._expired: dict[str, tuple[float, int]] = {}

    def __contains__(self, sandbox_id: str) -> bool:
        return sandbox_id in self._sandboxes

    def __len__(self) -> int:
        return len(self._sandboxes)

    def ids(self) -> set[str]:
        return set(self._sandboxes)

    def all(self) -> list[Sandbox]:
        return list(self._sandboxes.values())

    def add(self, sandbox: Sandbox) -> None:
        self._sandboxes[sandbox.id] = sandbox

    def get(self, sandbox_id: str) -> Sandbox:
        """The sandbox, or SandboxNotFound saying whether it expired or never was."""
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

    def is_current(self, sandbox: Sandbox) -> bool:
        """True while ``sandbox`` is still the one registered under its id: not removed
        (or removed and its id reused) since the caller got it."""
        return self._sandboxes.get(sandbox.id) is sandbox

    def forget(self, sandbox_id: str) -> None:
        """Drop a sandbox, with its connection to the runner."""
        sandbox = self._sandboxes.pop(sandbox_id, None)
        if sandbox is not None and sandbox.runner is not None:
            sandbox.runner.close()

    def expire(self, sandbox: Sandbox) -> None:
        """Drop a sandbox idle past its timeout, and remember when it expired."""
        self.forget(sandbox.id)
        self._expired[sandbox.id] = (sandbox.last_used + sandbox.timeout, sandbox.timeout)
        while len(self._expired) > EXPIRED_REMEMBERED:
            del self._expired[next(iter(self._expired))]

    def clear(self) -> None:
        self._sandboxes.clear()

    def full(self) -> bool:
        """No sandbox can be handed over: the limit counts sandboxes in use."""
        return len(self._sandboxes) + len(self.creating) >= self.limit

    @contextmanager
    def reserving(self, sandbox_id: str) -> Iterator[None]:
        """Count ``sandbox_id`` as being created while the block runs (take it with no
        await between the limit check and this reservation)."""
        self.creating.add(sandbox_id)
        try:
            yield
        finally:
            self.creating.discard(sandbox_id)


@asynccontextmanager
async def busy(sandbox: Sandbox, lock: anyio.Lock) -> AsyncIterator[None]:
    """Hold ``lock`` and mark the sandbox in use: the reaper never takes a busy one."""
    async with lock:
        sandbox.active += 1
        try:
            yield
        finally:
            sandbox.active -= 1
            sandbox.touch()
