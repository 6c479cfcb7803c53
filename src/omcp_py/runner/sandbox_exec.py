# Runs one execution inside a sandbox. Stdlib only, Python 3.8+; started per
# execution as `python3 -I -c SOURCE` through a docker exec, as the sandbox user.
#
# stdin:  one JSON line {"timeout": s, "limit": bytes, "code_len": n}, then n bytes of code.
# stdout: frames of 1 byte kind + 4 bytes big-endian length + payload:
#   o / e  the head of the code's stdout / stderr, as it arrives
#   O / E  the tail of stdout / stderr, at the end
#   r      the result (JSON), last
#
# The code runs in a forked child (no second interpreter start) in its own
# session, with /dev/null as stdin and pipes as stdout/stderr. When it exits, or
# its time is up, every other process of the sandbox user is killed with
# kill(-1): nothing it started outlives the execution, whether a child, a setsid
# daemon or a process that ignores SIGTERM. PID 1 is exempt from kill(-1).
# The host serialises executions per sandbox, so kill(-1) never hits another one.
import json
import os
import select
import signal
import struct
import sys
import time

READ_CHUNK = 65536


def send(kind, payload):
    frame = struct.pack(">cI", kind, len(payload)) + payload
    view = memoryview(frame)
    while view:
        written = os.write(1, view)
        view = view[written:]


class Capture:
    """Keeps the head (sent at once) and the tail of one stream; counts the rest."""

    def __init__(self, kind, limit):
        self.kind = kind
        self.head_left = limit // 2
        self.tail_cap = limit - limit // 2
        self.tail = bytearray()
        self.dropped = 0

    def feed(self, data):
        if self.head_left:
            head = data[: self.head_left]
            send(self.kind, head)
            self.head_left -= len(head)
            data = data[len(head) :]
        if data:
            self.tail += data
            excess = len(self.tail) - self.tail_cap
            if excess > 0:
                self.dropped += excess
                del self.tail[:excess]


def others_alive():
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (1, me):
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X"):
            return True
    return False


def kill_others():
    # Repeat: a process that forks while the signal is on its way leaves a child.
    for _ in range(200):
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return
        if not others_alive():
            return
        time.sleep(0.002)


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


def run_child(code):
    # Runs in the forked child; ends the process through SystemExit, so atexit
    # handlers, thread joins and stream flushes happen as in `python -c`.
    import builtins
    import io
    import linecache
    import traceback
    import types

    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    # Unbuffered, like `python -u`: output written before a timeout kill is kept.
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
    # -I protected this program from files in the working directory; the code gets
    # the usual `python -c` search path back.
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[0:0] = [""] + extra
    add_user_site()
    sys.argv = ["-c"]
    sys.dont_write_bytecode = True
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main

    filename = "<sandbox>"
    source = code.decode("utf-8")
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        compiled = compile(source, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        traceback.print_exception(type(exc), exc, None)
        sys.exit(1)
    try:
        exec(compiled, main.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        # Drop our own frame: the traceback starts at the user's code.
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        sys.exit(1)
    sys.exit(0)


def add_user_site():
    # Packages installed into the sandbox live in the user base PYTHONUSERBASE names;
    # -I left its site dir out. It goes where `python` puts it: ahead of the image's
    # site-packages (an installed version wins), behind the standard library.
    if not os.environ.get("PYTHONUSERBASE"):
        return
    import site

    user_site = site.getusersitepackages()
    if not os.path.isdir(user_site) or user_site in sys.path:
        return
    index = len(sys.path)
    for i, path in enumerate(sys.path):
        if path.endswith(("site-packages", "dist-packages")):
            index = i
            break
    sys.path.insert(index, user_site)
    site.addsitedir(user_site)  # its .pth files


def read_job():
    stdin = sys.stdin.buffer
    job = json.loads(stdin.readline())
    code = stdin.read(job["code_len"])
    if len(code) != job["code_len"]:
        raise SystemExit("omcp_py: truncated job on stdin")
    return job, code


def supervise(pid, out_r, err_r, job, oom_before):
    start = time.monotonic()
    deadline = start + job["timeout"]
    streams = {out_r: Capture(b"o", job["limit"]), err_r: Capture(b"e", job["limit"])}
    captures = list(streams.values())
    status = None
    timed_out = False
    killed_at = None
    end = None
    while True:
        if status is None:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                end = time.monotonic()
                kill_others()
        if status is not None and not streams:
            break
        now = time.monotonic()
        if status is None and not timed_out and now >= deadline:
            timed_out = True
            killed_at = now
            kill_others()
        if killed_at is not None and now - killed_at > 3:
            break  # a process stuck in the kernel: report rather than wait on it
        if streams:
            wait = 0.02 if status is None else 0.2
            ready, _, _ = select.select(list(streams), [], [], wait)
            for fd in ready:
                data = os.read(fd, READ_CHUNK)
                if data:
                    streams[fd].feed(data)
                else:
                    os.close(fd)
                    del streams[fd]
        else:
            time.sleep(0.005)

    exit_code = 128 + signal.SIGKILL
    sig = None
    if status is not None:
        if os.WIFEXITED(status):
            exit_code = os.WEXITSTATUS(status)
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            exit_code = 128 + sig
    oom_after = oom_kills()
    result = {
        "exit_code": exit_code,
        "signal": sig,
        "timed_out": timed_out,
        "oom_killed": oom_before is not None and oom_after is not None and oom_after > oom_before,
        "duration_ms": round(((end or time.monotonic()) - start) * 1000, 3),
        "dropped": [captures[0].dropped, captures[1].dropped],
    }
    send(b"O", bytes(captures[0].tail))
    send(b"E", bytes(captures[1].tail))
    send(b"r", json.dumps(result).encode())


def main():
    job, code = read_job()
    oom_before = oom_kills()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        os.close(out_r)
        os.close(err_r)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        for fd in (null, out_w, err_w):
            if fd > 2:
                os.close(fd)
        try:
            # Under memory pressure the kernel kills the code, never this supervisor.
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:
            pass
        run_child(code)  # ends the child process
    os.close(out_w)
    os.close(err_w)
    supervise(pid, out_r, err_r, job, oom_before)
    os._exit(0)


main()
