# PID 1 of every sandbox (stdlib only; runs as the sandbox user).
# As the namespace's init it ignores every signal sent from inside the sandbox,
# so the code can kill anything but the sandbox itself. It reaps orphans at
# once, so what a run leaves behind never holds pids (SANDBOX_PIDS_LIMIT).
import os
import signal

try:
    import ctypes

    # PR_SET_DUMPABLE(4) = 0: the sandbox's code (same uid) can neither ptrace
    # PID 1 nor read its /proc entries.
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)
except Exception:
    pass

# SIGCHLD stays blocked and is waited for: a child that dies between two
# sweeps leaves the signal pending, so no orphan is ever missed.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
while True:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    signal.sigtimedwait([signal.SIGCHLD], 5)
