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

from omcp_py import ownership, principals
from omcp_py.boundary import Figure
from omcp_py.errors import SandboxNotFound
from omcp_py.hardening import packages_volume
from omcp_py.models import ExecutionResult, utc_iso

if TYPE_CHECKING:
    from omcp_py.runner.client import RunnerConnection

# A UUID4's 122 random bits, in full: ids are the only key to a sandbox a caller has
# (another client of a shared server, a guess from inside a sandbox), so they must not
# be guessable or enumerable.
_ID = re.compile(r"^[0-9a-f]{32}$")
# Sandboxes the reaper removed, remembered so that a later call says it expired.
EXPIRED_REMEMBERED = 1000


def new_id() -> str:
    return uuid.uuid4().hex


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
    principal: str = principals.LOCAL  # who created it: the only caller who can use it

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
        # Ids of sandboxes being created, with whose they will be: they hold a slot, and
        # reconciliation must not mistake their container (created, not yet started)
        # for a stopped one.
        self.creating: dict[str, str] = {}
        # id: (when it expired, its timeout, its principal); oldest first, bounded.
        self._expired: dict[str, tuple[float, int, str]] = {}

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

    def mine(self) -> list[Sandbox]:
        """The sandboxes of the current principal."""
        who = principals.current()
        return [s for s in self._sandboxes.values() if s.principal == who]

    def get(self, sandbox_id: str) -> Sandbox:
        """The current principal's sandbox, or SandboxNotFound saying whether it expired
        or never was (another principal's is one that never was)."""
        who = principals.current()
        sandbox = self._sandboxes.get(sandbox_id) if _ID.match(sandbox_id) else None
        if sandbox is not None and sandbox.principal != who:
            sandbox = None
        expired = self._expired.get(sandbox_id)
        if sandbox is None and expired is not None and expired[2] == who:
            when, timeout, _ = expired
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
        self._expired[sandbox.id] = (
            sandbox.last_used + sandbox.timeout,
            sandbox.timeout,
            sandbox.principal,
        )
        while len(self._expired) > EXPIRED_REMEMBERED:
            del self._expired[next(iter(self._expired))]

    def clear(self) -> None:
        self._sandboxes.clear()

    def full(self) -> bool:
        """No sandbox can be handed over: the limit counts sandboxes in use."""
        return len(self._sandboxes) + len(self.creating) >= self.limit

    def held_by_current(self) -> int:
        """Sandboxes the current principal has or is being given."""
        who = principals.current()
        return len(self.mine()) + sum(1 for owner in self.creating.values() if owner == who)

    @contextmanager
    def reserving(self, sandbox_id: str) -> Iterator[None]:
        """Count ``sandbox_id`` as being created for the current principal while the
        block runs (take it with no await between the limit check and this)."""
        self.creating[sandbox_id] = principals.current()
        try:
            yield
        finally:
            self.creating.pop(sandbox_id, None)


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
