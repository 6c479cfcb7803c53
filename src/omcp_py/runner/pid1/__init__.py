"""PID 1 of every sandbox, and the runner of its executions, in parts.

Stdlib only, Python 3.8+. The parts are never run on the host: ``runner.assemble``
joins them in a fixed order into one program, delivered as ``python3 -I -c SOURCE``
(the image needs nothing but Python), which runs as PID 1. Imported as modules they
behave the same, so unit tests import them. State is never rebound across parts:
settings and the loaded filter live in objects the parts share (``become.CODE``,
``seccomp.SECCOMP``).

Parts, in the order they are assembled (each uses only the stdlib and earlier parts):
``protocol`` (the frames, shared with the host's client), ``procs``, ``figures``,
``seccomp``, ``become``, ``child``, ``zygote``, ``files``, ``job``, ``loop`` (``main``).

Why PID 1: it reaps orphans at once, so nothing a run leaves behind holds pids; and
its kill(-1) spares itself, so after every run all other processes go, whether
children, setsid daemons or processes that ignore SIGTERM. No exec per run: a run is
a fork of this warm interpreter.

Privileges: PID 1 runs as root with SETPCAP, SETUID, SETGID and KILL only; each fork
empties its capability bounding set and becomes the code's user (argv: UID:GID DIR NPROC)
before it is handed any code. So the code cannot signal, trace or read PID 1: not
under Linux, where the namespace's init also ignores signals from inside, and not
under gVisor, which does not shield init.

Stateless (the default): each run is a forked child, in its own session, that runs
the code in a fresh __main__ like `python -c` and exits.
Stateful: runs go to one long-lived forked interpreter, the kernel, which keeps its
__main__ between them. After each run every process but PID 1 and the kernel is
killed. If the kernel dies (timeout, out of memory, os._exit), the run says so, and
the next one starts a fresh kernel and says the state was lost.
"""
