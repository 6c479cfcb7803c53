"""A few sandboxes made ahead of need, so create_sandbox hands one over at once.

Pool sandboxes are real, hardened, started containers with their runner attached;
they have never run code. They count against MAX_SANDBOXES: the manager lets the
pool grow only while sandboxes + sandboxes being made + pool < MAX_SANDBOXES, so
the engine never holds more of this server's sandbox containers than the limit,
and near the limit the pool simply shrinks to nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from omcp_py.sandboxes import Sandbox

log = logging.getLogger(__name__)

_RETRY_FIRST = 2.0
_RETRY_MAX = 60.0


class WarmPool:
    """Ready sandboxes and the background task that keeps their number up."""

    def __init__(
        self,
        size: int,
        make: Callable[[str], Awaitable[Sandbox]],
        headroom: Callable[[], bool],
        new_id: Callable[[], str],
    ) -> None:
        """Args:
        size: how many ready sandboxes to keep (SANDBOX_POOL_SIZE; 0: none).
        make: creates one started sandbox with the given id.
        headroom: True while one more container fits under MAX_SANDBOXES.
        new_id: a fresh sandbox id.
        """
        self.size = size
        self._make = make
        self._headroom = headroom
        self._new_id = new_id
        self.ready: list[Sandbox] = []
        self.making: set[str] = set()
        self._wanted = anyio.Event()
        self._changed = anyio.Event()

    def ids(self) -> set[str]:
        """Ids of the pool's sandboxes, ready or being made."""
        return {s.id for s in self.ready} | self.making

    def take(self) -> Sandbox | None:
        """A ready sandbox, or None; asks for a replacement either way."""
        self.want()
        return self.ready.pop(0) if self.ready else None

    def want(self) -> None:
        """Wake the filler: the pool may be short."""
        self._wanted.set()

    async def changed(self) -> None:
        """Wait until a sandbox is added, or an attempt to make one ends."""
        await self._changed.wait()

    def drop(self, sandbox_ids: set[str]) -> None:
        """Forget ready sandboxes whose containers are gone."""
        self.ready = [s for s in self.ready if s.id not in sandbox_ids]
        self.want()

    def clear(self) -> None:
        self.ready.clear()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _short(self) -> bool:
        return len(self.ready) + len(self.making) < self.size and self._headroom()

    async def fill(self) -> None:
        """Keep the pool full until cancelled (run it in a task group)."""
        if self.size <= 0:
            return
        delay = _RETRY_FIRST
        self.want()
        while True:
            await self._wanted.wait()
            self._wanted = anyio.Event()
            while self._short():
                sandbox_id = self._new_id()
                self.making.add(sandbox_id)
                try:
                    sandbox = await self._make(sandbox_id)
                except Exception as exc:  # engine down, image missing: try again later
                    log.debug("could not add a sandbox to the pool: %s", exc)
                    self.making.discard(sandbox_id)
                    self._notify()
                    await anyio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                    continue
                self.making.discard(sandbox_id)
                self.ready.append(sandbox)
                delay = _RETRY_FIRST
                self._notify()
