"""The worker threads blocking Docker calls run in, so the event loop never waits on
the engine, and one slow sandbox never stalls the others."""

import threading
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from omcp_py.cancel import Stop

T = TypeVar("T")


class Workers:
    """Three pools of worker threads, each with its own limit."""

    def __init__(self, max_sandboxes: int) -> None:
        # One thread per sandbox can sit in a long execution; control calls (create,
        # list, remove) have their own threads so they never queue behind it.
        self.executions = anyio.CapacityLimiter(max_sandboxes + 2)
        self.controls = anyio.CapacityLimiter(8)
        # Installs wait on pip for up to MAX_INSTALL_TIMEOUT: their own threads.
        self.installs = anyio.CapacityLimiter(max_sandboxes)

    async def control(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a control thread."""
        return await self.run(self.controls, fn, *args)

    async def run(self, limiter: Any, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a thread of ``limiter``."""
        return await anyio.to_thread.run_sync(partial(fn, *args), limiter=limiter)

    async def cancellable(self, limiter: Any, longest: float, work: Callable[[Stop], T]) -> T:
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
