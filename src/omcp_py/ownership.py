"""Which server owns a sandbox, written on the container as labels.

The engine is the source of truth for which sandboxes exist; these labels say
whose they are, so two servers on one engine (two Claude Desktop windows) never
touch each other's sandboxes, and a server can tell an orphan (its owner is
gone) from a sandbox of a live neighbour.
"""

import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

PREFIX = "omcp_py."
MANAGED_BY = PREFIX + "managed-by"
SANDBOX_ID = PREFIX + "sandbox-id"
OWNER = PREFIX + "owner"
OWNER_HOST = PREFIX + "owner-host"
OWNER_PID = PREFIX + "owner-pid"
OWNER_STARTED = PREFIX + "owner-started"
CREATED = PREFIX + "created"
TIMEOUT = PREFIX + "timeout"
# "sandbox" (absent on sandboxes of older versions) or "installer".
ROLE = PREFIX + "role"
# The caller (a bearer token's name) a sandbox was made for, over HTTP with auth.
PRINCIPAL = PREFIX + "principal"


def _host_identity() -> str:
    # The boot id tells a rebooted machine (where every old pid is meaningless)
    # from the same one; it exists on Linux only.
    host = socket.gethostname()
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{host}/{boot}" if boot else host


def _process_started(pid: int) -> str:
    """Start time of a process in clock ticks since boot ('' where unknown)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22; the command name (field 2) may contain spaces, so split after ')'.
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass(frozen=True)
class Owner:
    """This server process, as it is recorded on its sandboxes."""

    instance: str
    host: str
    pid: int
    started: str

    @classmethod
    def current(cls) -> "Owner":
        """The identity of the running process (a fresh instance id each start)."""
        pid = os.getpid()
        return cls(uuid.uuid4().hex, _host_identity(), pid, _process_started(pid))

    def labels(self) -> dict[str, str]:
        """Labels that mark a container as managed by this server."""
        return {
            MANAGED_BY: "omcp_py",
            OWNER: self.instance,
            OWNER_HOST: self.host,
            OWNER_PID: str(self.pid),
            OWNER_STARTED: self.started,
        }

    def is_orphan(self, labels: dict[str, str]) -> bool:
        """True only when the owning server of a container is certainly gone.

        A container of another machine, or one whose owner cannot be checked, is
        never an orphan: removing a live neighbour's sandbox is the worse mistake.
        """
        if labels.get(OWNER) == self.instance or labels.get(OWNER_HOST) != self.host:
            return False
        try:
            pid = int(labels.get(OWNER_PID, ""))
        except ValueError:
            return False
        if not _pid_exists(pid):
            return True
        started = labels.get(OWNER_STARTED, "")
        now = _process_started(pid)
        # Same pid, other start time: the pid was reused by another process.
        return bool(started and now and started != now)


def _pid_exists(pid: int) -> bool:
    if os.name != "posix":
        return True  # no cheap, safe probe: treat as alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
