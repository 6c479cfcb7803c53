"""One execution seen from PID 1: the spare interpreter (Child) and the run under
way (Job) with its output, progress, limits and result."""

import json
import os
import signal
import time

from omcp_py.runner.pid1.child import (
    CHILD_MESSAGE,
    ONCE,
    REAP,
    STAY,
    child_main,
    packages_stamp,
)
from omcp_py.runner.pid1.figures import FIGURE_REASONS, MAX_FIGURES, checked_image
from omcp_py.runner.pid1.procs import (
    Capture,
    describe,
    memory_used,
    nonblocking,
    oom_kills,
    send,
    write_all,
)
from omcp_py.runner.pid1.protocol import (
    PROGRESS,
    PROGRESS_INTERVAL,
    READ_CHUNK,
    RESULT,
    STDERR,
    STDERR_TAIL,
    STDOUT,
    STDOUT_TAIL,
)

STUCK_SECONDS = 3.0  # after a kill, stop waiting for a process stuck in the kernel
SETTLE_SECONDS = 5.0  # the longest a run waits for the last one's memory to come back
GUARD_INTERVAL = 0.005


class Child:
    """A forked, ready interpreter, seen from PID 1: its pipes and pid."""

    def __init__(self, zygote=None):
        """Forked by ``zygote`` (a ready Zygote) if it answers, by PID 1 otherwise."""
        ctl_r, self.ctl_w = os.pipe()
        self.status_r, status_w = os.pipe()
        self.out_r, out_w = os.pipe()
        self.err_r, err_w = os.pipe()
        self.pid = zygote.fork([ctl_r, status_w, out_w, err_w]) if zygote else None
        # What the user site was when its modules were imported: packages installed
        # after it make this child stale when it preloads modules (loop.take_spare).
        self.stamp = zygote.stamp if self.pid is not None else packages_stamp()
        if self.pid is None:
            try:
                self.pid = os.fork()
            except OSError:  # the process limit: no pipe may stay open behind it
                for fd in (ctl_r, status_w, out_w, err_w):
                    os.close(fd)
                self.close()
                raise
            if self.pid == 0:
                try:
                    child_main(ctl_r, status_w, out_w, err_w)
                finally:
                    os._exit(70)
        for fd in (ctl_r, status_w, out_w, err_w):
            os.close(fd)
        for fd in (self.status_r, self.out_r, self.err_r):
            nonblocking(fd)
        self.status_buffer = b""

    def send(self, kind, code, budget=0):
        try:
            write_all(self.ctl_w, CHILD_MESSAGE.pack(kind, budget, len(code)) + code)
        except OSError:
            pass  # it is gone: the next reap says how

    def fds(self):
        return [self.out_r, self.err_r, self.status_r]

    def close(self):
        for fd in (self.ctl_w, self.status_r, self.out_r, self.err_r):
            try:
                os.close(fd)
            except OSError:
                pass


class Job:
    """One execution in progress."""

    def __init__(self, runner, rid, header, code):
        self.runner = runner
        self.rid = rid
        self.limit = int(header["limit"])
        self.stateful = bool(header.get("stateful"))
        # Under a runtime whose out-of-memory kill ends the whole sandbox (gVisor: the
        # host kills its kernel), the run is killed here once the sandbox uses more
        # than this; the container's own limit leaves gVisor room above it.
        self.guard = int(header.get("guard") or 0)
        self.guard_tripped = False
        self.budget = int(header.get("images") or 0)
        self.images = []
        self.images_left_out = 0
        self.images_why = []
        self.cancelled = False
        self.oom_before = oom_kills()
        self.out = Capture(STDOUT, rid, self.limit)
        self.err = Capture(STDERR, rid, self.limit)
        self.status = None
        self.end = None
        self.timed_out = False
        self.killed_at = None
        self.state = {}
        if self.stateful:
            if runner.kernel is None:
                runner.kernel = runner.take_spare()
                self.state["fresh"] = True
                if runner.lost:
                    self.state["previous_lost"] = runner.lost
                    runner.lost = None
            self.child = runner.kernel
        else:
            self.child = runner.take_spare()
        self.pid = self.child.pid
        self.streams = {self.child.out_r: self.out, self.child.err_r: self.err}
        self.start = time.monotonic()
        self.deadline = self.start + float(header["timeout"])
        self.next_progress = self.start + PROGRESS_INTERVAL
        self.code = code
        # gVisor hands back a killed run's memory a little later (more so under load):
        # the next run waits for it, or the guard would kill it for its predecessor's
        # memory. The wait counts toward the run's timeout.
        self.settle_until = None
        if self.guard and (memory_used() or 0) > self.guard:
            self.settle_until = min(self.start + SETTLE_SECONDS, self.deadline)
        else:
            self.begin()

    def begin(self):
        self.settle_until = None
        self.child.send(STAY if self.stateful else ONCE, self.code, self.budget)
        self.code = None

    def settled(self, now):
        """True once the code has been sent to the child."""
        if self.settle_until is None:
            return True
        if self.cancelled or now >= self.settle_until or (memory_used() or 0) <= self.guard:
            self.begin()
            return True
        return False

    def fds(self):
        fds = list(self.streams)
        if self.status is None:
            fds.append(self.child.status_r)
        return fds

    def readable(self, fd):
        if fd == self.child.status_r:
            self.read_status()
            return
        capture = self.streams.get(fd)
        if capture is None:
            return
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        if data:
            capture.feed(data)
        else:
            del self.streams[fd]

    def drain(self):
        for fd, capture in list(self.streams.items()):
            while True:
                try:
                    data = os.read(fd, READ_CHUNK)
                except OSError:
                    break
                if not data:
                    break
                capture.feed(data)

    def read_status(self):
        child = self.child
        while True:
            try:
                data = os.read(child.status_r, READ_CHUNK)
            except OSError:
                break
            if not data:
                break
            child.status_buffer += data
        while b"\n" in child.status_buffer:
            line, _, child.status_buffer = child.status_buffer.partition(b"\n")
            try:
                status = json.loads(line)
                exit_code = int(status["exit_code"])
            except (ValueError, KeyError, TypeError):
                continue  # not a status line: something the code wrote to this pipe
            self.take_images(status)
            self.end = time.monotonic()
            self.status = ("exit", exit_code)
            break
        else:
            # A status line is a few bytes plus the images: anything longer is not ours.
            if len(child.status_buffer) > self.budget * 2 + 65536:
                child.status_buffer = b""
            return
        # Everything the code wrote before its status is in the pipes: take it, then
        # end whatever the run started (a stateful interpreter stays).
        self.drain()
        if self.stateful:
            if self.runner.kill_others(keep=self.child.pid):
                self.child.send(REAP, b"")
        else:
            self.runner.doom_others()  # waiting for them to be gone follows the answer
        self.drain()
        self.streams = {}

    def take_images(self, status):
        # The code's own process made these, and the code can replace them: only
        # PNG and JPEG images in strict base64 with their format's signature, at most
        # MAX_FIGURES, within the budget the host expects. The rest are counted, with
        # the reason.
        room = self.budget * 4 // 3 + 4
        images = status.get("images") or []
        try:
            left_out = max(0, min(int(status.get("images_left_out") or 0), 10**6))
        except (TypeError, ValueError, OverflowError):
            left_out = 0
        said = status.get("images_left_out_why")
        for reason in said if isinstance(said, list) else []:
            if reason in FIGURE_REASONS:  # the code's process says it: known words only
                self.left_out_why(reason)
        if not isinstance(images, list):
            images = []
            self.left_out_why("not a list of figures")
            left_out += 1
        for index, image in enumerate(images):
            if index >= MAX_FIGURES:
                self.left_out_why("more than %d figures in one run" % MAX_FIGURES)
                left_out += len(images) - index
                break
            why, entry = checked_image(image, room)
            if why:
                self.left_out_why(why)
                left_out += 1
                continue
            room -= len(entry["data"])
            self.images.append(entry)
        self.images_left_out = left_out

    def left_out_why(self, reason):
        if reason not in self.images_why:
            self.images_why.append(reason)

    def cancel(self, now):
        """The host no longer wants this run: end it (and the stateful interpreter) now."""
        if self.status is None and self.killed_at is None:
            self.cancelled = True
            self.killed_at = now
            self.runner.kill_others()

    def progress(self, now):
        if now >= self.next_progress and self.status is None:
            self.next_progress = now + PROGRESS_INTERVAL
            report = {
                "elapsed": round(now - self.start, 3),
                "stdout": self.out.total,
                "stderr": self.err.total,
            }
            send(PROGRESS, self.rid, json.dumps(report).encode())

    def step(self, now):
        """Advance; True when the result has been sent."""
        runner = self.runner
        if not self.settled(now):
            self.progress(now)
            return False
        status = runner.exited.pop(self.pid, None)
        if status is not None:
            if self.status is None:
                self.end = self.end or now
                self.status = ("wait", status)
            if self.stateful:
                self.kernel_died(status)
            else:
                runner.doom_others()  # the run ended: so does everything it started
                self.drain()
                self.streams = {}
        self.progress(now)
        if self.status is None and not self.timed_out and now >= self.deadline:
            self.timed_out = True
            self.killed_at = now
            # A stateful interpreter goes too: its state cannot be trusted mid-run.
            runner.kill_others()
        if self.guard and self.killed_at is None and self.status is None:
            used = memory_used()
            if used is not None and used > self.guard:
                self.guard_tripped = True
                self.killed_at = now
                runner.kill_others()
        if self.killed_at is not None and now - self.killed_at > STUCK_SECONDS:
            self.finish()
            return True
        if self.status is not None and not self.streams:
            self.finish()
            return True
        return False

    def kernel_died(self, status):
        runner = self.runner
        code, sig = describe(status)
        if self.timed_out:
            reason = "it was killed when the run timed out"
        elif self.cancelled:
            reason = "it was stopped when the client cancelled the run"
        elif self.guard_tripped:
            reason = "it was killed when the sandbox ran out of memory"
        elif sig == signal.SIGKILL:
            reason = "it was killed (out of memory?)"
        elif sig is None:
            reason = "it exited with code %d" % code
        else:
            reason = "it was killed by signal %d" % sig
        self.state["killed"] = reason
        runner.lost = reason
        runner.kill_others()
        self.drain()
        self.streams = {}
        if runner.kernel is self.child:
            runner.kernel = None

    def wait_time(self, now):
        if self.status is None and not self.timed_out:
            wait = max(0.0, min(self.deadline, self.next_progress) - now)
            # The guard looks every few milliseconds: gVisor fills memory at a few
            # hundred megabytes a second, and its room above the guard is 128 MiB.
            return min(wait, GUARD_INTERVAL) if self.guard else wait
        return 0.2

    def finish(self):
        exit_code, sig = 128 + signal.SIGKILL, None
        if self.status is not None:
            how, value = self.status
            if how == "wait":
                exit_code, sig = describe(value)
            else:
                exit_code = value
        oom_after = oom_kills()
        result = {
            "exit_code": exit_code,
            "signal": sig,
            "timed_out": self.timed_out,
            "oom_killed": self.guard_tripped
            or (
                self.oom_before is not None
                and oom_after is not None
                and oom_after > self.oom_before
            ),
            "duration_ms": round(((self.end or time.monotonic()) - self.start) * 1000, 3),
            "dropped": [self.out.dropped, self.err.dropped],
            "state": self.state,
            "cancelled": self.cancelled,
            "images": self.images,
            "images_left_out": self.images_left_out,
            "images_left_out_why": self.images_why,
        }
        send(STDOUT_TAIL, self.rid, bytes(self.out.tail))
        send(STDERR_TAIL, self.rid, bytes(self.err.tail))
        send(RESULT, self.rid, json.dumps(result).encode())
        if self.runner.kernel is not self.child:
            # Done with it (it exits, or was killed): its exit is no one's news.
            self.runner.watched.discard(self.child.pid)
            self.child.close()
