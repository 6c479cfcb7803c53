"""Stop: a tool call's cancellation, as the blocking work in its worker thread sees it.

When the client sends ``notifications/cancelled``, the SDK cancels the tool's task; a
worker thread cannot be cancelled, so the work registers how it is stopped (tell the
runner, kill the installer container) and the manager calls ``stop()``.
"""

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Stop:
    """Set once, from any thread; runs every hook registered before or after that."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = False
        self._hooks: list[Callable[[], object]] = []

    @property
    def stopped(self) -> bool:
        """True once the call has been cancelled."""
        return self._stopped

    def on_stop(self, hook: Callable[[], object]) -> None:
        """Call ``hook`` when the call is cancelled (at once if it already is).

        Args:
            hook: stops the work; it must not block for long, and may run in any thread.
        """
        with self._lock:
            if not self._stopped:
                self._hooks.append(hook)
                return
        _call(hook)

    def stop(self) -> None:
        """Cancel the call: run the hooks (once)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            _call(hook)


def _call(hook: Callable[[], object]) -> None:
    try:
        hook()
    except Exception:  # the work ends by its own deadline then
        log.warning("stopping a cancelled call failed", exc_info=True)
