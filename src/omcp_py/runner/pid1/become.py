"""Becoming the code's user: the identity argv gives, an empty capability set,
the seccomp filter, the code's directory and its process limit."""

import builtins
import io
import os
import signal
import stat
import sys
import types

from omcp_py.runner.pid1.figures import PyplotHook
from omcp_py.runner.pid1.procs import _prctl, set_dumpable
from omcp_py.runner.pid1.protocol import CODE_GID, CODE_UID
from omcp_py.runner.pid1.seccomp import install_seccomp

PR_CAPBSET_DROP = 24


class CODE:
    """Who runs the code, and where: PID 1's argv sets these once at start (loop.main).
    Set on this class, never rebound, so every part sees the same values whether the
    parts are imported (tests) or assembled into one program."""

    uid = CODE_UID
    gid = CODE_GID
    dir = "/sandbox"
    nproc = 0  # processes the code's user may have (0: the host's pids limit does it)
    preload = ()  # modules a warm child imports before it waits (SANDBOX_PRELOAD)


def status_fields():
    with open("/proc/self/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def open_code_dirs():
    """Make the code's directory and home writable by the code's user, when the
    engine did not. Docker mounts them owned by that user (tmpfs uid=); Podman gives
    a tmpfs mounted over a directory of the image that directory's owner and mode
    (root, 0755), whatever was asked. PID 1 owns them then, and an owner may chmod
    with no capability: sticky and open to all, like /tmp, since no one but the
    code's user ever runs here."""
    for path in (CODE.dir, os.environ.get("HOME") or ""):
        try:
            st = os.lstat(path)
            mine = st.st_uid == os.getuid() != CODE.uid
            if path and stat.S_ISDIR(st.st_mode) and mine and not st.st_mode & 0o002:
                os.chmod(path, 0o1777)
        except OSError:
            pass  # not there, or read-only: the code's first write says so


def become_code_user():
    """In a fresh fork of PID 1 (root, a few capabilities): become the code's user with
    no capability left, not even in the bounding set. Exits if that did not work."""
    uid, gid = CODE.uid, CODE.gid
    if CODE.nproc:
        # Under gVisor the host's pids limit counts gVisor's own threads, not the
        # code's processes: its kernel counts those, per user.
        import resource

        resource.setrlimit(resource.RLIMIT_NPROC, (CODE.nproc, CODE.nproc))
    if os.getuid() == 0:
        if _prctl is not None:
            for cap in range(64):
                if _prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                    break  # past the last capability this kernel has
        os.setgroups([])
        os.setgid(gid)  # as root these set the real, effective and saved ids
        os.setuid(uid)
    fields = status_fields()
    caps = [fields.get(name, "0").strip() for name in ("CapInh", "CapPrm", "CapEff", "CapAmb")]
    if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid or int("".join(caps), 16):
        os.write(2, b"omcp runner: could not drop to the sandbox user; not running code\n")
        os._exit(70)
    if not install_seccomp():
        os.write(2, b"omcp runner: could not load the seccomp filter; not running code\n")
        os._exit(70)
    os.chdir(CODE.dir)


def become_code_process(out_w, err_w, keep=()):
    """In a fresh fork of PID 1: drop its duties and privileges, wire stdio to the pipes."""
    become_code_user()
    become_interpreter()
    wire_stdio(out_w, err_w, keep)
    set_dumpable(1)
    prefer_oom_kill()


def become_interpreter():
    """The interpreter the code expects, like `python -c` (also the zygote's, whose
    imports then see the same settings as a run's)."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Unbuffered, like `python -u`: output written before a timeout kill is kept. On
    # fds 0-2, whatever is behind them: wire_stdio puts a run's pipes there.
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        write_through=True,
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False),
        encoding="utf-8",
        errors="backslashreplace",
        write_through=True,
    )
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    # -I protected the runner from files in the working directory; the code gets the
    # usual `python -c` search path back.
    sys.path[0:0] = [""]  # the package directory is added before each run
    sys.argv = ["-c"]
    sys.dont_write_bytecode = True
    # No display here: matplotlib draws off screen (so do programs the code starts),
    # and plt.show() hands the figures to the result.
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.meta_path.insert(0, PyplotHook())


def wire_stdio(out_w, err_w, keep=()):
    """A session of its own, stdin empty, stdout and stderr to PID 1's pipes, and no
    other file descriptor but ``keep``."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    close_all_but(keep)


def prefer_oom_kill():
    # Under memory pressure the kernel kills the code, never PID 1 (or the zygote).
    # Once dumpable: a process that is not may not write its own /proc files.
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def new_main():
    """A fresh __main__ module for the code."""
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    return main


def close_all_but(keep):
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1024)
