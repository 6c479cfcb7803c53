"""PID 1's dealings with processes: prctl, writing frames to the host, capturing
output, finding and killing the processes of a run, reading memory and OOM kills."""

import os
import signal

from omcp_py.runner.pid1.protocol import FRAME

try:
    import ctypes

    _prctl = ctypes.CDLL(None).prctl
except Exception:  # no ctypes in the image: no dumpable flag, nothing else lost
    _prctl = None


def prctl(option, value):
    if _prctl is not None:
        try:
            _prctl(option, value, 0, 0, 0)
        except Exception:
            pass


def set_name(name):
    # PR_SET_NAME (15): what ps and /proc/PID/stat show, so a warm child waiting for
    # code is not mistaken for something the code left running.
    prctl(15, name)


def set_dumpable(value):
    # PR_SET_DUMPABLE (4): 0 for PID 1 (the code, same uid, can neither ptrace it nor
    # read its /proc entries); back to 1 in the processes that run code.
    prctl(4, value)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[written:]


OUTBOX = bytearray()


def send(kind, rid, payload):
    # Frames wait for the end of the loop's turn: a result and its output then
    # cross the attach stream in one write, one wake-up of the host instead of four.
    OUTBOX.extend(FRAME.pack(kind, rid, len(payload)))
    OUTBOX.extend(payload)


def flush_outbox():
    if OUTBOX:
        data = bytes(OUTBOX)
        OUTBOX.clear()
        write_all(1, data)


def nonblocking(fd):
    os.set_blocking(fd, False)
    return fd


class Capture:
    """Keeps the head (sent at once) and the tail of one stream; counts the rest."""

    def __init__(self, kind, rid, limit):
        self.kind = kind
        self.rid = rid
        self.head_left = limit // 2
        self.tail_cap = limit - limit // 2
        self.tail = bytearray()
        self.dropped = 0
        self.total = 0

    def feed(self, data):
        self.total += len(data)
        if self.head_left:
            head = data[: self.head_left]
            send(self.kind, self.rid, head)
            self.head_left -= len(head)
            data = data[len(head) :]
        if data:
            self.tail += data
            excess = len(self.tail) - self.tail_cap
            if excess > 0:
                self.dropped += excess
                del self.tail[:excess]


def live_pids(keep=()):
    """Processes alive in the sandbox but PID 1 and the pids in ``keep``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == 1 or pid in keep:
            continue
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X"):
            found.append(pid)
    return found


def doom_others(keep=()):
    """SIGKILL every process but PID 1 (and ``keep``) at once, without waiting for
    them to go.

    A killed process never runs another instruction of its own, so the answer can
    leave now; Runner.kill_others then makes sure (a process forking right then may
    have been missed) before the next request is read.
    """
    if keep:
        for pid in live_pids(keep):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass


def oom_kills():
    for path in ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"):
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def memory_used():
    """Bytes in use in the sandbox, as /proc/meminfo says (None: unknown).

    Under gVisor that file is its own kernel's: everything the code holds, files in
    its tmpfs included, and nothing of gVisor itself.
    """
    total = available = None
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemTotal:"):
                    total = int(line.split()[1]) * 1024
                elif line.startswith(b"MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    if total is None or available is None:
        return None
    return total - available


def describe(status):
    """(exit code, signal) of a wait status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    return os.WEXITSTATUS(status), None
