"""Whether the engine will hold a sandbox to what we ask: its limits, its runtime,
and the known escapes of its versions (a warning). Checked once per connection."""

import logging
import threading
from typing import Any

from omcp_py import escapes
from omcp_py.config import SandboxConfig
from omcp_py.engine import Engine
from omcp_py.errors import IsolationUnavailable
from omcp_py.hardening import missing_limits, runtime_problem

log = logging.getLogger(__name__)


class IsolationCheck:
    """The engine's answer to ``docker info``, judged before any sandbox is made."""

    def __init__(self, engine: Engine, config: SandboxConfig) -> None:
        self.engine = engine
        self.config = config
        self._checked_client: Any = None
        # The pool, the reaper and a first tool call check at once at startup: one
        # check (and one set of warnings) per connection, not one per caller.
        self._lock = threading.Lock()

    def check(self, client: Any) -> None:
        """IsolationUnavailable when the engine would drop a limit or lacks the runtime."""
        with self._lock:
            # Once per connection: a reconnect may reach another engine.
            if self._checked_client is not client:
                self._check(client)

    def _check(self, client: Any) -> None:
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
        self._warn_of_escapes(client)

    def _warn_of_escapes(self, client: Any) -> None:
        try:
            answer = client.version()
        except Exception as exc:  # a warning only: never a reason to refuse
            log.debug("docker version failed: %s", exc)
            return
        for text in escapes.warnings(answer):
            log.warning("%s", text)
