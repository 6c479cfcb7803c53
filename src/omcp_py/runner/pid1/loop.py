"""PID 1's loop: read requests from the host, start and watch jobs, answer file
requests, and never die."""

import json
import os
import select
import signal
import sys
import time
import traceback

from omcp_py.runner.pid1.become import CODE, open_code_dirs
from omcp_py.runner.pid1.child import child_main, packages_stamp
from omcp_py.runner.pid1.files import file_request
from omcp_py.runner.pid1.job import Child, Job
from omcp_py.runner.pid1.procs import (
    describe,
    doom_others,
    flush_outbox,
    live_pids,
    nonblocking,
    send,
    set_dumpable,
)
from omcp_py.runner.pid1.protocol import (
    CANCEL,
    DATA,
    EXECUTE,
    FILES,
    FRAME,
    READ_CHUNK,
    RESET,
    RESULT,
    SYNC,
    SYNC_ECHO,
)
from omcp_py.runner.pid1.seccomp import prepare_seccomp
from omcp_py.runner.pid1.zygote import NOTHING, Zygote


class Runner:
    def __init__(self):
        self.inbox = bytearray()
        self.stdin_open = True
        self.job = None
        self.spare = None  # a warm child waiting for its code
        self.zygote = None  # with SANDBOX_PRELOAD: what forks the warm children
        self.kernel = None  # the stateful interpreter, once there is one
        self.lost = None  # why the last kernel died, told to the next stateful run
        self.watched = set()
        self.exited = {}
        self.wake_r, wake_w = os.pipe()
        nonblocking(self.wake_r)
        nonblocking(wake_w)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        # Python's own SIGINT handler would let the code interrupt PID 1.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # The host's end of stdout may go away; a write then fails, it does not kill.
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def take_spare(self):
        child, self.spare = self.spare, None
        stamp = packages_stamp() if CODE.preload else None
        if self.zygote is not None and self.zygote.stamp != stamp:
            self.drop_zygote()  # its imports predate an install: a new one follows the run
        if child is not None and CODE.preload and child.stamp != stamp:
            # It imported modules before an install replaced or added some: a run
            # must see what is installed now.
            try:
                os.kill(child.pid, signal.SIGKILL)
            except OSError:
                pass
            self.forget(child)
            child = None
        return child if child is not None else self.new_child()

    def ensure_spare(self):
        # Forked as soon as a run has been answered, so its set-up (about 5 ms, most
        # of it copy-on-write faults) is off the next run's path unless that run comes
        # right away. A stateful sandbox needs one only when its interpreter is gone.
        if self.spare is None and self.kernel is None:
            if CODE.preload and self.zygote is None:
                self.zygote = Zygote(child_main)
                self.watched.add(self.zygote.pid)
            if self.zygote is None or self.zygote.ready:
                try:
                    self.spare = self.new_child()
                except OSError:
                    pass  # at the process limit (a run's leftovers): the next run forks
            # else: forked once the zygote says it is ready (loop)

    def new_child(self):
        zygote = self.zygote if self.zygote is not None and self.zygote.ready else None
        child = Child(zygote)
        if zygote is not None and not zygote.answering:
            self.drop_zygote()  # a run stopped or ended it: a new one follows the run
        self.watched.add(child.pid)
        return child

    def drop_zygote(self):
        zygote, self.zygote = self.zygote, None
        if zygote is not None:
            try:
                os.kill(zygote.pid, signal.SIGKILL)
            except OSError:
                pass
            self.forget(zygote)

    def zygote_said(self):
        said = self.zygote.take_ready()
        if said == NOTHING:
            # None of the modules is in the image: children are forked here, as
            # without SANDBOX_PRELOAD, and import nothing ahead.
            CODE.preload = ()
        if not self.zygote.ready:
            self.drop_zygote()
        elif self.job is None:  # else once the run is answered, like any spare
            self.ensure_spare()

    def doom_others(self):
        """SIGKILL all but PID 1, the zygote and the spare, without waiting."""
        keep = (self.zygote, self.spare)
        doom_others(keep=tuple(process.pid for process in keep if process is not None))

    def forget(self, child):
        self.watched.discard(child.pid)
        self.exited.pop(child.pid, None)
        child.close()

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.watched:
                continue
            self.watched.discard(pid)
            self.exited[pid] = status
            if self.spare is not None and pid == self.spare.pid:
                self.forget(self.spare)
                self.spare = None
            elif self.zygote is not None and pid == self.zygote.pid:
                self.drop_zygote()  # killed by a run: a new one follows the run
            elif self.kernel is not None and pid == self.kernel.pid and self.job is None:
                # Died between runs (a thread called os._exit, or out of memory).
                code, sig = describe(status)
                self.lost = "it died between runs (%s)" % (
                    "signal %d" % sig if sig else "exit code %d" % code
                )
                self.forget(self.kernel)
                self.kernel = None

    def kill_others(self, keep=None):
        """SIGKILL every process but PID 1 (and ``keep``), until none is left.

        Returns True when there was something to kill.
        """
        killed = False
        if self.spare is not None and self.spare.pid != keep:
            self.forget(self.spare)  # killed below; a new one is forked after the run
            self.spare = None
        # The zygote stays: no run can change it (zygote.py), and its imports are what
        # it is for. A run that stopped it is found out at the next fork.
        keep = {pid for pid in (keep, self.zygote and self.zygote.pid) if pid}
        for _ in range(1000):
            self.reap()
            if not keep:
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    return killed
                killed = True
            else:
                for pid in live_pids(keep):
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed = True
                    except OSError:
                        pass
            if not live_pids(keep):
                self.reap()
                return killed
            # A process that forked while the signal was on its way left a child.
            time.sleep(0.001)
        return killed

    def next_request(self):
        if len(self.inbox) < FRAME.size:
            return None
        kind, rid, size = FRAME.unpack_from(self.inbox)
        if len(self.inbox) < FRAME.size + size:
            return None
        payload = bytes(self.inbox[FRAME.size : FRAME.size + size])
        del self.inbox[: FRAME.size + size]
        return kind, rid, payload

    def take_cancel(self):
        # The host sends nothing but a cancel while a run is under way.
        if len(self.inbox) >= FRAME.size and self.inbox[:1] == CANCEL:
            request = self.next_request()
            if request is not None and request[1] == self.job.rid:
                self.job.cancel(time.monotonic())

    def handle(self, kind, rid, payload):
        if kind == CANCEL:
            return  # the run it would stop has already been answered
        if kind == SYNC:
            # A new connection: the echo tells the host where our frames begin.
            send(RESULT, rid, payload[:SYNC_ECHO])
            return
        if kind == FILES:
            line, _, data = payload.partition(b"\n")
            answer, content = file_request(json.loads(line), data)
            if content:
                send(DATA, rid, content)
            send(RESULT, rid, json.dumps(answer).encode())
            return
        if kind == EXECUTE:
            line, _, code = payload.partition(b"\n")
            self.job = Job(self, rid, json.loads(line), code)
        elif kind == RESET:
            had = self.kernel is not None
            if had:
                kernel, self.kernel = self.kernel, None
                self.kill_others()
                self.forget(kernel)
            self.lost = None
            send(RESULT, rid, json.dumps({"reset": True, "had_state": had}).encode())
            self.ensure_spare()
        else:
            send(RESULT, rid, json.dumps({"error": "unknown request %r" % kind}).encode())

    def idle_output(self, fd):
        # Output of a stateful kernel's threads between runs: read and dropped, so
        # they never block on a full pipe.
        try:
            os.read(fd, READ_CHUNK)
        except OSError:
            pass

    def loop(self):
        while True:
            now = time.monotonic()
            fds = [self.wake_r]
            if self.stdin_open:
                fds.append(0)  # during a run too: a cancel may come
            if self.job is not None:
                fds += self.job.fds()
            elif self.kernel is not None:
                fds += self.kernel.fds()
            starting = self.zygote if self.zygote is not None and not self.zygote.ready else None
            if starting is not None:
                fds.append(starting.sock.fileno())
            timeout = self.job.wait_time(now) if self.job is not None else None
            try:
                ready = select.select(fds, [], [], timeout)[0]
            except (InterruptedError, ValueError, OSError):
                ready = []
            if self.wake_r in ready:
                try:
                    while os.read(self.wake_r, 4096):
                        pass
                except OSError:
                    pass
            self.reap()
            for fd in ready:
                if fd == self.wake_r:
                    continue
                if starting is not None and fd == starting.sock.fileno():
                    if starting is self.zygote:  # not dropped by reap meanwhile
                        self.zygote_said()
                    continue
                if fd == 0:
                    data = os.read(0, READ_CHUNK)
                    if data:
                        self.inbox += data
                    else:
                        self.stdin_open = False  # the host is gone: stay up as init
                elif self.job is not None:
                    self.job.readable(fd)
                else:
                    self.idle_output(fd)
            if self.job is not None:
                self.take_cancel()
            if self.job is not None and self.job.step(time.monotonic()):
                flush_outbox()  # the answer leaves before the clean-up
                stateful, self.job = self.job.stateful, None
                self.ensure_spare()
                if not stateful:
                    # Its leftovers were only sent SIGKILL (doom_others) before the
                    # answer; make sure they are gone before the next request. The
                    # spare, forked first, sets itself up meanwhile.
                    self.kill_others(keep=self.spare.pid if self.spare else None)
            if self.job is None:
                request = self.next_request()
                if request is not None:
                    self.handle(*request)
            flush_outbox()


def main():
    # python3 -I -c SOURCE UID:GID DIR NPROC [PRELOAD,...]
    if len(sys.argv) >= 4:
        uid, _, gid = sys.argv[1].partition(":")
        CODE.uid, CODE.gid, CODE.dir = int(uid), int(gid), sys.argv[2]
        CODE.nproc = int(sys.argv[3])
    if len(sys.argv) >= 5:
        CODE.preload = tuple(name for name in sys.argv[4].split(",") if name)
    set_dumpable(0)
    open_code_dirs()
    prepare_seccomp()
    runner = Runner()
    runner.ensure_spare()  # the first run of a new sandbox starts warm too
    while True:
        try:
            runner.loop()
        except BaseException:
            # PID 1 must not die: its death ends the sandbox. Say what happened and go on.
            try:
                traceback.print_exc()
                if runner.job is not None:
                    runner.kill_others()
                    runner.job.finish()
                    runner.job = None
                flush_outbox()
            except Exception:
                pass
