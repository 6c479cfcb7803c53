"""The zygote (SANDBOX_PRELOAD): one interpreter that imports the preloaded modules
once and forks every warm child from then on, so no run pays those imports and the
children share the imported pages copy-on-write.

It is a child of PID 1 that has become the code's user, like a warm child, but it
never runs code and nothing a run does reaches it: it is not dumpable (a run, though
of the same user, can neither trace it nor read its memory or its /proc files), it
holds no pipe a run has, and a run is a fresh fork of it each time. A run can kill or
stop it, as it could any process of its user; PID 1 then forks children itself (with
the imports in each, as without a zygote) and starts a new zygote after the run.

Each child is forked twice (zygote -> short-lived middle -> child), so that it is
PID 1's child once the middle exits: PID 1 reaps it and learns how it ended, as for
a child it forked itself.
"""

import array
import gc
import os
import signal
import socket
import struct
import sys

from omcp_py.runner.pid1.become import (
    CODE,
    become_code_user,
    become_interpreter,
    close_all_but,
    prefer_oom_kill,
    wire_stdio,
)
from omcp_py.runner.pid1.child import add_user_site, packages_stamp, preload
from omcp_py.runner.pid1.figures import render
from omcp_py.runner.pid1.procs import set_dumpable, set_name

FORK_SECONDS = 1.0  # the longest PID 1 waits for a fork before doing it itself
PID = struct.Struct(">i")
PIPES = 4  # a child's ends: control (read), status, stdout, stderr (write)
READY = b"r"
NOTHING = b"n"  # the image has none of the modules: no zygote is needed


class Zygote:
    """PID 1's handle on the zygote: its pid and the socket that asks it for a child."""

    def __init__(self, child_main):
        # Taken before the imports: packages installed after them make it stale.
        self.stamp = packages_stamp()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.pid = os.fork()
        if self.pid == 0:
            try:
                ours.close()
                zygote_main(theirs, child_main)
            finally:
                os._exit(70)
        theirs.close()
        ours.settimeout(FORK_SECONDS)
        self.sock = ours
        self.ready = False  # it says so once its imports are done
        self.answering = True

    def take_ready(self):
        """Its socket is readable before it is ready: what it said (READY, NOTHING),
        or b"" when it is gone instead."""
        try:
            said = self.sock.recv(1)
        except OSError:
            return b""
        self.ready = said == READY
        return said

    def fork(self, fds):
        """A new child that takes ``fds`` as its pipes; its pid, or None when the
        zygote could not fork (the process limit: ``answering`` stays True) or does not
        answer in time (it is gone, or a run stopped it: ``answering`` is False)."""
        self.answering = False
        try:
            self.sock.sendmsg(
                [b"f"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            )
            answer = b""
            while len(answer) < PID.size:
                data = self.sock.recv(PID.size - len(answer))
                if not data:
                    return None
                answer += data
        except OSError:
            return None
        self.answering = True
        pid = PID.unpack(answer)[0]
        return pid if pid > 1 else None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def zygote_main(sock, child_main):
    set_name(b"omcp-zygote")
    become_code_user()
    set_dumpable(0)  # of the code's user, yet no run may trace it or read its memory
    become_interpreter()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    close_all_but([sock.fileno()])
    add_user_site()
    if not preload(CODE.preload):
        sock.sendall(NOTHING)
        os._exit(0)
    warm_up_drawing()
    # What the imports made stays for good: out of the collector's sight, a child's
    # first collection does not touch (and so copy) every page the zygote shares.
    gc.collect()
    gc.freeze()
    sock.sendall(READY)
    while True:
        try:
            message, ancillary, _, _ = sock.recvmsg(1, socket.CMSG_LEN(PIPES * 4))
        except OSError:
            os._exit(0)
        if not message:
            os._exit(0)  # PID 1 closed its end
        received = []
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received += array.array("i", data[: len(data) - len(data) % 4])
        if len(received) != PIPES:
            for fd in received:
                os.close(fd)
            sock.sendall(PID.pack(0))
            continue
        try:
            middle = os.fork()
        except OSError:
            middle = -1  # at the process limit: it says so, and stays
        if middle == 0:
            try:
                child = os.fork()
            except OSError:
                child = 0  # at the process limit: PID 1 hears at once, not after a wait
            else:
                if child == 0:
                    sock.close()
                    start_child(received, child_main)
            sock.sendall(PID.pack(child))
            os._exit(0)
        for fd in received:
            os.close(fd)
        if middle < 0:
            sock.sendall(PID.pack(0))
            continue
        try:
            os.waitpid(middle, 0)
        except ChildProcessError:
            pass


def warm_up_drawing():
    """Draw one figure and drop it: matplotlib loads its fonts and renderer at the
    first drawing, which every run that shows a figure would pay again. Only caches
    are left behind: no figure stays open."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    try:
        figure = pyplot.figure()
        axes = figure.add_subplot()
        axes.plot([0, 1], [0, 1], label="warm")
        axes.set_title("warm")
        axes.legend()
        render(figure, 72, "png")
        pyplot.close("all")
    except Exception:
        pass


def start_child(fds, child_main):
    """In the zygote's grandchild: become a warm child on PID 1's pipes."""
    try:
        ctl_r, status_w, out_w, err_w = fds
        wire_stdio(out_w, err_w, keep=(ctl_r, status_w))
        set_dumpable(1)
        prefer_oom_kill()
        # numpy seeds its global generator when it is imported, in the zygote: each
        # child draws its own numbers (the random module reseeds itself at fork).
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            try:
                numpy.random.seed()
            except Exception:
                pass
        child_main(ctl_r, status_w, forked_by_zygote=True)
    finally:
        os._exit(70)
