# PID 1 of every sandbox, and the runner of its executions. Stdlib only, Python 3.8+;
# delivered as `python3 -I -c SOURCE`, runs as the sandbox user.
#
# The host talks to it over the container's own stdin and stdout (docker attach), one
# request at a time. Frames both ways: kind (1 byte), request id (4 bytes), length
# (4 bytes, big-endian), payload.
#   host -> runner   x  execute: a JSON line {"timeout", "limit", "stateful", "guard",
#                       "images"}, then the code
#                    c  cancel: stop the execution under way with this request id now
#                    z  reset: end the stateful interpreter
#                    f  files: a JSON line {"op": "put" | "get" | "list", "path", "max"},
#                       then the content to put
#                    s  sync, on each new connection: the answer echoes the payload
#   runner -> host   o / e  the head of the code's stdout / stderr, as it arrives
#                    O / E  their tails, at the end
#                    p      progress of an execution (JSON), every PROGRESS_INTERVAL
#                    d      the content of a file got
#                    r      the result (JSON): always the last frame of a request
#
# Why PID 1: it reaps orphans at once, so nothing a run leaves behind holds pids; and
# its kill(-1) spares itself, so after every run all other processes go, whether
# children, setsid daemons or processes that ignore SIGTERM. No exec per run: a run is
# a fork of this warm interpreter.
#
# Privileges: PID 1 runs as root with SETPCAP, SETUID, SETGID and KILL only; each fork
# empties its capability bounding set and becomes the code's user (argv: UID:GID DIR NPROC)
# before it is handed any code. So the code cannot signal, trace or read PID 1: not
# under Linux, where the namespace's init also ignores signals from inside, and not
# under gVisor, which does not shield init.
#
# Stateless (the default): each run is a forked child, in its own session, that runs
# the code in a fresh __main__ like `python -c` and exits.
# Stateful: runs go to one long-lived forked interpreter, the kernel, which keeps its
# __main__ between them. After each run every process but PID 1 and the kernel is
# killed. If the kernel dies (timeout, out of memory, os._exit), the run says so, and
# the next one starts a fresh kernel and says the state was lost.
import atexit
import binascii
import builtins
import errno
import io
import json
import linecache
import os
import select
import signal
import stat
import struct
import sys
import time
import traceback
import types

try:
    import ctypes

    _prctl = ctypes.CDLL(None).prctl
except Exception:  # no ctypes in the image: no dumpable flag, nothing else lost
    _prctl = None

FRAME = struct.Struct(">cII")
READ_CHUNK = 65536
STUCK_SECONDS = 3.0  # after a kill, stop waiting for a process stuck in the kernel
GUARD_INTERVAL = 0.005
# Clients that extend their deadline on progress need some well within 5 seconds.
PROGRESS_INTERVAL = 2.0
FILE_OP_SECONDS = 30.0  # a file helper that takes longer is killed


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


def live_pids(keep):
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == 1 or pid == keep:
            continue
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in (b"Z", b"X"):
            found.append(pid)
    return found


def doom_others():
    """SIGKILL every process but PID 1 at once, without waiting for them to go.

    A killed process never runs another instruction of its own, so the answer can
    leave now; Runner.kill_others then makes sure (a process forking right then may
    have been missed) before the next request is read.
    """
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


# -- in the processes that run code ------------------------------------------------------


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


# -- figures: every matplotlib figure a run leaves open (or shows) comes back as an image --
# Nothing here imports matplotlib: code that does not use it pays nothing.
SHOWN = []  # figures plt.show() took during this run, in order
MAX_SIDE = 2048  # pixels; clients scale larger images down anyway, and they cost tokens
MIN_SIDE = 256  # below this a chart is unreadable: leave it out rather than shrink it
MAX_FIGURES = 20  # drawn per run at most: each takes time from the run's own timeout


def patch_pyplot(pyplot):
    """plt.show() collects the open figures for the result and closes them, as in a
    notebook: later plotting starts a new figure instead of drawing over the shown one."""
    if getattr(pyplot.show, "omcp", False):
        return

    def show(*args, **kwargs):
        SHOWN.extend(pyplot.figure(num) for num in pyplot.get_fignums())
        pyplot.close("all")

    show.omcp = True
    show.__doc__ = "Show the open figures: they come back with the result as images."
    pyplot.show = show


class PyplotHook:
    """An import hook that finds nothing itself: when matplotlib.pyplot is imported it
    wraps the loader, so show() is patched before the code can use it."""

    def find_spec(self, name, path=None, target=None):
        if name != "matplotlib.pyplot":
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return None
        run = loader.exec_module

        def exec_module(module):
            run(module)
            patch_pyplot(module)

        loader.exec_module = exec_module
        return spec


def take_figures():
    """The figures of this run: shown ones first, then those still open; all closed."""
    figures, SHOWN[:] = list(SHOWN), []
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        try:
            figures.extend(pyplot.figure(num) for num in pyplot.get_fignums())
            pyplot.close("all")
        except Exception:
            traceback.print_exc()
    return figures


# Why the code's process left figures out, as it may say it (anything else it says is
# ignored: it could say anything).
FIGURE_REASONS = (
    "IMAGE_BUDGET is 0",
    "more than %d figures in one run" % MAX_FIGURES,
    "could not be drawn",
    "over IMAGE_BUDGET",
)
IMAGE_SIGNATURES = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}


def checked_image(image, room):
    """(why it is refused, None) or (None, the image with its real size), for an image
    the code's process reported: it could have reported anything."""
    if not isinstance(image, dict):
        return "not a PNG or JPEG image", None
    mime, data = image.get("mime"), image.get("data")
    if mime not in IMAGE_SIGNATURES or not isinstance(data, str):
        return "not a PNG or JPEG image", None
    if len(data) > room:
        return "over IMAGE_BUDGET", None
    try:
        raw = data.encode("ascii")
        if len(raw) % 4 or raw.translate(None, BASE64_ALPHABET + b"="):
            raise ValueError
        decoded = binascii.a2b_base64(raw)
    except (ValueError, binascii.Error, UnicodeError):
        return "not base64", None
    if binascii.b2a_base64(decoded, newline=False) != raw:
        return "not base64", None
    if not decoded.startswith(IMAGE_SIGNATURES[mime]):
        return "not a %s image" % mime.split("/")[1].upper(), None
    width, height = image_size(decoded)
    return None, {"mime": mime, "width": width, "height": height, "data": data}


BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def image_size(data):
    """(width, height) of a PNG or JPEG, read from its header; (0, 0) if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    index = 2
    while index + 9 < len(data) and data[index] == 0xFF:
        marker = data[index + 1]
        length = struct.unpack(">H", data[index + 2 : index + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            height, width = struct.unpack(">HH", data[index + 5 : index + 9])
            return width, height
        index += 2 + length
    return 0, 0


def render(figure, dpi, fmt):
    buffer = io.BytesIO()
    options = {"format": fmt, "dpi": dpi, "bbox_inches": "tight"}
    if fmt == "jpeg":
        options["pil_kwargs"] = {"quality": 75}
    figure.savefig(buffer, **options)
    data = buffer.getvalue()
    width, height = image_size(data)
    return {"data": data, "mime": "image/" + fmt, "width": width, "height": height, "dpi": dpi}


def largest_dpi(figure):
    width, height = figure.get_size_inches()
    return min(float(figure.dpi), MAX_SIDE / max(width, height, 0.01))


def shrink(figure, image, target):
    """A rendering of ``figure`` of at most ``target`` bytes, or None.

    Smaller PNGs first (charts stay crisp), then JPEG (dense images, photos), never
    below MIN_SIDE pixels.
    """
    width, height = figure.get_size_inches()
    lowest = MIN_SIDE / max(width, height, 0.01)
    for fmt in ("png", "jpeg"):
        if image["mime"] != "image/" + fmt:
            image = render(figure, largest_dpi(figure), fmt)
        for _ in range(5):
            size = len(image["data"])
            if size <= target:
                return image
            # The encoded size follows the pixel count, roughly: aim a little below.
            dpi = image["dpi"] * min(0.9, (target / size) ** 0.5 * 0.95)
            if dpi < lowest:
                break
            image = render(figure, dpi, fmt)
    return None


def fair_shares(sizes, budget):
    """Split ``budget`` so small images keep their size and big ones share the rest."""
    shares = [0] * len(sizes)
    left = budget
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for position, index in enumerate(order):
        share = min(sizes[index], left // (len(order) - position))
        shares[index] = share
        left -= share
    return shares


def encode_figures(figures, budget):
    """Render figures as images of ``budget`` raw bytes at most, all together.

    Returns:
        (images as JSON-ready dicts, how many figures were left out, why: a list of
        FIGURE_REASONS).
    """
    why = []
    if budget <= 0 and figures:
        why.append("IMAGE_BUDGET is 0")
    elif len(figures) > MAX_FIGURES:
        why.append("more than %d figures in one run" % MAX_FIGURES)
    pairs = []
    drawn = figures[:MAX_FIGURES] if budget > 0 else []
    for number, figure in enumerate(drawn, 1):
        try:
            pairs.append((figure, render(figure, largest_dpi(figure), "png")))
        except Exception as exc:
            print("[omcp_py] figure %d could not be drawn: %r" % (number, exc), file=sys.stderr)
            if "could not be drawn" not in why:
                why.append("could not be drawn")
    keep = len(pairs)
    while keep:
        sizes = [len(image["data"]) for _, image in pairs[:keep]]
        if sum(sizes) <= budget:
            break
        for index, share in enumerate(fair_shares(sizes, budget)):
            figure, image = pairs[index]
            if len(image["data"]) > share:
                smaller = shrink(figure, image, share)
                if smaller is None:
                    # Not even the smallest readable rendering fits: drop the last
                    # figure, which frees room for those before it.
                    keep -= 1
                    break
                pairs[index] = (figure, smaller)
    out = []
    for _, image in pairs[:keep]:
        data = image.pop("data")
        del image["dpi"]
        image["data"] = binascii.b2a_base64(data, newline=False).decode("ascii")
        out.append(image)
    if keep < len(pairs):
        why.append("over IMAGE_BUDGET")
    return out, len(figures) - len(out), why


PR_CAPBSET_DROP = 24
CODE_USER = (1000, 1000)  # uid, gid of the code: argv says (see main)
CODE_DIR = "/sandbox"
CODE_NPROC = 0  # processes the code's user may have (0: the host's pids limit does it)


def status_fields():
    with open("/proc/self/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


# -- a seccomp filter of our own ---------------------------------------------------------
# Docker's default seccomp profile already refuses these under runc; gVisor does not
# apply it (runsc needs --oci-seccomp), and inside gVisor an unprivileged process may
# create a user namespace and hold every capability there. So each code process gets
# this filter too: namespaces, mounts, kernel modules, kexec, bpf, keyrings and
# handle-based opens fail with EPERM; clone3 with ENOSYS (its flags cannot be read by
# a filter; the C library falls back to clone, whose flags can).
_ARCHES = {
    # AUDIT_ARCH: (clone, clone3, {refused syscalls})
    0xC000003E: (  # x86_64
        56,
        435,
        {272, 308, 165, 166, 155, 175, 313, 176, 246, 320, 321, 250, 248, 249, 304}
        | set(range(428, 434)),
    ),
    0xC00000B7: (  # aarch64
        220,
        435,
        {97, 268, 40, 39, 41, 105, 273, 106, 104, 294, 280, 219, 217, 218, 265}
        | set(range(428, 434)),
    ),
}
_NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET


def seccomp_program():
    """The BPF program, as (code, jt, jf, k) tuples."""
    ld_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    blocks = []
    for arch, (clone, clone3, refused) in _ARCHES.items():
        block = [(ld_abs, 0, 0, 0)]  # seccomp_data.nr
        if arch == 0xC000003E:  # the x32 calls of x86_64, all of them
            block += [(jge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]
        for nr in sorted(refused):
            block += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
        block += [(jeq, 0, 1, clone3), (ret, 0, 0, enosys)]
        block += [
            (jeq, 0, 3, clone),
            (ld_abs, 0, 0, 16),  # args[0], its low 32 bits: the clone flags
            (jset, 0, 1, _NAMESPACE_FLAGS),
            (ret, 0, 0, eperm),
            (ret, 0, 0, allow),
        ]
        blocks.append((arch, block))
    # Dispatch on seccomp_data.arch; another architecture keeps the runtime's rules.
    program = [(ld_abs, 0, 0, 4)]
    before = 0
    for index, (arch, block) in enumerate(blocks):
        # A jump of k lands k + 1 instructions further: past the other dispatches,
        # the final allow, and the blocks before this one.
        program.append((jeq, len(blocks) - index + before, 0, arch))
        before += len(block)
    program.append((ret, 0, 0, allow))
    for _, block in blocks:
        program.extend(block)
    return program


SECCOMP_PROGRAM = None  # built once in PID 1 (prepare_seccomp), loaded by each child


def prepare_seccomp():
    global SECCOMP_PROGRAM
    if _prctl is None:
        return

    class SockFilter(ctypes.Structure):
        _fields_ = [
            ("code", ctypes.c_ushort),
            ("jt", ctypes.c_ubyte),
            ("jf", ctypes.c_ubyte),
            ("k", ctypes.c_uint),
        ]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    program = seccomp_program()
    filters = (SockFilter * len(program))(*[SockFilter(*op) for op in program])
    fprog = SockFprog(len(program), filters)
    # The pointer keeps the program alive; each child passes it to prctl as is.
    SECCOMP_PROGRAM = ctypes.byref(fprog)


def install_seccomp():
    """Load the filter into this process (and all it starts). False when impossible."""
    if SECCOMP_PROGRAM is None:
        return False
    PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
    return _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, SECCOMP_PROGRAM, 0, 0) == 0


def become_code_user():
    """In a fresh fork of PID 1 (root, a few capabilities): become the code's user with
    no capability left, not even in the bounding set. Exits if that did not work."""
    uid, gid = CODE_USER
    if CODE_NPROC:
        # Under gVisor the host's pids limit counts gVisor's own threads, not the
        # code's processes: its kernel counts those, per user.
        import resource

        resource.setrlimit(resource.RLIMIT_NPROC, (CODE_NPROC, CODE_NPROC))
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
    os.chdir(CODE_DIR)


def become_code_process(out_w, err_w, keep=()):
    """In a fresh fork: drop PID 1's duties and privileges, wire stdio to the pipes."""
    become_code_user()
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    close_all_but(keep)
    set_dumpable(1)
    try:
        # Under memory pressure the kernel kills the code, never PID 1.
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
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
    # -I protected the runner from files in the working directory; the code gets the
    # usual `python -c` search path back.
    sys.path[0:0] = [""]  # the package directory is added before each run
    sys.argv = ["-c"]
    sys.dont_write_bytecode = True
    # No display here: matplotlib draws off screen (so do programs the code starts),
    # and plt.show() hands the figures to the result.
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.meta_path.insert(0, PyplotHook())
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


def run_code(main, code, filename):
    """Run code in ``main``; returns the exit code (SystemExit is caught)."""
    source = code.decode("utf-8")
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        compiled = compile(source, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        traceback.print_exception(type(exc), exc, None)
        return 1
    try:
        exec(compiled, main.__dict__)
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code & 0xFF
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException as exc:
        # Drop our own frame: the traceback starts at the user's code.
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        return 1
    return 0


def finish_like_python(main):
    """What `python -c` visibly does at exit, without its full teardown (about 10 ms
    in a fork): wait for the code's threads, run atexit handlers, destroy its globals
    (files it left open are flushed and closed), flush stdout and stderr."""
    try:
        threading = sys.modules.get("threading")
        if threading is not None and hasattr(threading, "_shutdown"):
            threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    try:
        main.__dict__.clear()
    except BaseException:
        pass


def flush_stdio():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


def reap_children():
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def read_exact(fd, size):
    chunks = []
    while size:
        data = os.read(fd, min(size, READ_CHUNK))
        if not data:
            raise EOFError
        chunks.append(data)
        size -= len(data)
    return b"".join(chunks)


ONCE = b"1"  # run the code, then exit: a stateless execution
STAY = b"k"  # run the code and wait for more: the stateful interpreter
REAP = b"w"  # collect the exit status of children PID 1 has just killed
CHILD_MESSAGE = struct.Struct(">cII")  # kind, image budget, size of the code


def child_main(ctl_r, status_w, out_w, err_w):
    """A warm child: set up ahead of need, then runs what PID 1 sends it."""
    set_name(b"omcp-ready")
    main = become_code_process(out_w, err_w, keep=(ctl_r, status_w))
    # Go through a whole run of nothing before any code waits on one: after a fork,
    # every first write to a page copies it (about 8 us a page here, some 90 pages
    # for a run). No atexit handlers: they belong to the real run.
    import importlib

    importlib.invalidate_caches()
    add_user_site()
    warm = types.ModuleType("__warmup__")
    run_code(warm, b"pass", "<warmup>")
    warm.__dict__.clear()
    flush_stdio()
    json.dumps({"exit_code": 0})

    counter = 0
    while True:
        try:
            kind, budget, size = CHILD_MESSAGE.unpack(read_exact(ctl_r, CHILD_MESSAGE.size))
            code = read_exact(ctl_r, size)
        except (EOFError, OSError):
            os._exit(0)
        if kind == REAP:
            # What the last run started was killed after it; without this its
            # zombies would hold pids for as long as the interpreter lives.
            reap_children()
            continue
        if counter == 0:
            set_name(b"omcp-state" if kind == STAY else b"python3")
        counter += 1
        # Packages installed since this process started: found without a restart.
        importlib.invalidate_caches()
        add_user_site()
        if kind == ONCE:
            exit_code = run_code(main, code, "<sandbox>")
        else:
            exit_code = run_code(main, code, "<sandbox-%d>" % counter)
        status = {"exit_code": exit_code}
        if SHOWN or "matplotlib.pyplot" in sys.modules:
            figures = take_figures()
            if figures:
                images, left_out, why = encode_figures(figures, budget)
                status.update(images=images, images_left_out=left_out, images_left_out_why=why)
            del figures
        if kind == ONCE:
            finish_like_python(main)
        flush_stdio()
        write_all(status_w, json.dumps(status).encode() + b"\n")
        if kind == ONCE:
            os._exit(exit_code)


# -- files: put, get and list, for the host's file tools ---------------------------------
# Done by a fork that becomes the code's user first, like a run: it can reach nothing the
# code cannot, and it walks the path one directory at a time without following a link,
# so a link the code planted cannot lead it anywhere. PID 1 itself never opens a path.
FILE_ROOTS = ("/tmp",)  # besides CODE_DIR: the other place the code can write
LIST_LIMIT = 1000  # entries list_files returns at most
# Bytes a listing's answer may take (names and link targets are the code's choice):
# well under the host's frame limit for it, so a listing always arrives whole.
LIST_BYTES = 512 * 1024
TARGET_CHARS = 512  # a link target is shown cut to this many characters


class Refused(Exception):
    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message


def shown_path(root, parts):
    return "/".join([root.rstrip("/")] + list(parts)) if parts else root


def split_path(path):
    """(root, components) of a path the host sent; refuses what leaves the roots."""
    roots = (CODE_DIR,) + FILE_ROOTS
    if not path:
        raise Refused("invalid", "the path is empty")
    if path.startswith("/"):
        for root in roots:
            if path == root or path.startswith(root.rstrip("/") + "/"):
                rest = path[len(root) :]
                break
        else:
            raise Refused(
                "outside",
                "%s is outside the sandbox's files, which are under %s"
                % (path, " and ".join(roots)),
            )
    else:
        root, rest = CODE_DIR, path
    parts = [part for part in rest.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise Refused("outside", "%s goes up with '..', which is not allowed" % path)
    return root, parts


def refuse_special(st, shown, dir_fd, name, want_dir=False):
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            target = "?"
        raise Refused(
            "link", "%s is a symbolic link (to %s); links are not followed" % (shown, target)
        )
    if want_dir:
        if not stat.S_ISDIR(mode):
            raise Refused("not_directory", "%s is not a directory" % shown)
        return
    if stat.S_ISDIR(mode):
        raise Refused("directory", "%s is a directory" % shown)
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        )
        raise Refused("special", "%s is %s, not a regular file" % (shown, kind))


def lstat_at(name, dir_fd, shown):
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise Refused("missing", "%s does not exist" % shown) from None


def open_dir(root, parts, create=False):
    """A descriptor of root/parts, walked without following links (made if asked)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for index, part in enumerate(parts):
            shown = shown_path(root, parts[: index + 1])
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    raise Refused("missing", "%s does not exist" % shown) from None
                os.mkdir(part, 0o755, dir_fd=fd)
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            refuse_special(st, shown, fd, part, want_dir=True)
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError:  # swapped for a link since the stat
                raise Refused("link", "%s changed while it was opened" % shown) from None
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def get_file(request):
    root, parts = split_path(request["path"])
    if not parts:
        raise Refused("directory", "%s is a directory" % root)
    limit = int(request["max"])
    shown = shown_path(root, parts)
    dir_fd = open_dir(root, parts[:-1])
    try:
        st = lstat_at(parts[-1], dir_fd, shown)
        refuse_special(st, shown, dir_fd, parts[-1])
        if st.st_size > limit:
            raise Refused("too_large", "%s is %d bytes" % (shown, st.st_size))
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
        fd = os.open(parts[-1], flags, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        refuse_special(st, shown, None, parts[-1])
        chunks, size = [], 0
        while size <= limit:
            data = os.read(fd, min(READ_CHUNK * 16, limit + 1 - size))
            if not data:
                break
            chunks.append(data)
            size += len(data)
    finally:
        os.close(fd)
    if size > limit:
        raise Refused("too_large", "%s is over %d bytes" % (shown, limit))
    return {"path": shown, "size": size, "modified": st.st_mtime}, b"".join(chunks)


def put_file(request, content):
    root, parts = split_path(request["path"])
    if not parts:
        raise Refused("directory", "%s is a directory" % root)
    shown = shown_path(root, parts)
    dir_fd = open_dir(root, parts[:-1], create=True)
    # Unpredictable: code that made this name first could make every upload fail.
    temporary = ".omcp-upload-" + binascii.hexlify(os.urandom(12)).decode()
    try:
        try:
            refuse_special(lstat_at(parts[-1], dir_fd, shown), shown, dir_fd, parts[-1])
        except Refused as exc:
            if exc.kind != "missing":
                raise
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(temporary, flags, 0o644, dir_fd=dir_fd)
        try:
            try:
                write_all(fd, content)
            finally:
                os.close(fd)
            # A rename replaces whatever is there now (even a link made since the
            # check) instead of writing through it.
            os.replace(temporary, parts[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(temporary, dir_fd=dir_fd)
            except OSError:
                pass
            raise
        st = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
    finally:
        os.close(dir_fd)
    return {"path": shown, "size": st.st_size, "modified": st.st_mtime}, b""


def list_files(request):
    root, parts = split_path(request.get("path") or CODE_DIR)
    shown = shown_path(root, parts)
    entries = []
    truncated = False
    room = LIST_BYTES
    top = open_dir(root, parts)
    try:
        st = os.fstatvfs(top)
        free = st.f_bavail * st.f_frsize
        pending = [(top, "")]
        while pending:
            fd, prefix = pending.pop()
            try:
                with os.scandir(fd) as found:
                    children = sorted(found, key=lambda entry: entry.name, reverse=True)
                subdirs = []
                for entry in reversed(children):
                    if len(entries) >= LIST_LIMIT or room <= 0:
                        truncated = True
                        break
                    st = entry.stat(follow_symlinks=False)
                    mode = st.st_mode
                    kind = (
                        "file"
                        if stat.S_ISREG(mode)
                        else "directory"
                        if stat.S_ISDIR(mode)
                        else "symlink"
                        if stat.S_ISLNK(mode)
                        else "fifo"
                        if stat.S_ISFIFO(mode)
                        else "socket"
                        if stat.S_ISSOCK(mode)
                        else "device"
                    )
                    item = {
                        "path": prefix + entry.name,
                        "type": kind,
                        "size": st.st_size if kind == "file" else 0,
                        "modified": st.st_mtime,
                    }
                    if kind == "symlink":
                        try:
                            target = os.readlink(entry.name, dir_fd=fd)
                        except OSError:
                            target = None
                        if target is not None:
                            if len(target) > TARGET_CHARS:
                                target = target[:TARGET_CHARS] + "..."
                            item["target"] = target
                    # As JSON escapes it, at worst six bytes a character.
                    room -= 100 + 6 * (len(item["path"]) + len(item.get("target") or ""))
                    entries.append(item)
                    if kind == "directory":
                        subdirs.append(entry.name)
                for name in reversed(subdirs):
                    try:
                        inner = os.open(
                            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd
                        )
                    except OSError:
                        continue  # unreadable, or replaced meanwhile
                    pending.append((inner, prefix + name + "/"))
            finally:
                os.close(fd)
            if truncated:
                break
    finally:
        for fd, _ in pending:
            os.close(fd)
    entries.sort(key=lambda item: item["path"])
    return {"path": shown, "entries": entries, "truncated": truncated, "free": free}, b""


def file_op(request, content):
    op = request.get("op")
    if op == "get":
        return get_file(request)
    if op == "put":
        return put_file(request, content)
    if op == "list":
        return list_files(request)
    raise Refused("invalid", "unknown file operation %r" % op)


def file_helper(request, content, answer_w):
    """In a fresh fork of PID 1: become the code's user and do one file request."""
    signal.set_wakeup_fd(-1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)  # never the host's stream
    close_all_but((answer_w,))
    become_code_user()
    try:
        answer, data = file_op(request, content)
    except Refused as exc:
        answer, data = {"error": exc.kind, "message": exc.message}, b""
    except OSError as exc:
        kind = {
            errno.ENOSPC: "full",
            errno.EDQUOT: "full",
            errno.EACCES: "permission",
            errno.EPERM: "permission",
            errno.EROFS: "permission",
            errno.ELOOP: "link",
            errno.ENAMETOOLONG: "invalid",
            errno.ENOTDIR: "not_directory",
        }.get(exc.errno, "os")
        answer = {
            "error": kind,
            "message": "%s: %s" % (request.get("path"), os.strerror(exc.errno)),
        }
        data = b""
    write_all(answer_w, json.dumps(answer).encode() + b"\n" + data)


def file_request(request, content):
    """Answer one file request; (answer, content got)."""
    try:
        answer_r, answer_w = os.pipe()
    except OSError as exc:
        return {"error": "busy", "message": "no pipe for the file helper: %s" % exc}, b""
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(answer_r)
        os.close(answer_w)
        return {"error": "busy", "message": "the file helper could not start: %s" % exc}, b""
    if pid == 0:
        code = 0
        try:
            os.close(answer_r)
            file_helper(request, content, answer_w)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(answer_w)
    chunks = []
    deadline = time.monotonic() + FILE_OP_SECONDS
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([answer_r], [], [], left)[0]:
                chunks = None
                os.kill(pid, signal.SIGKILL)
                break
            data = os.read(answer_r, READ_CHUNK * 16)
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(answer_r)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # the loop's reaper was first
    if chunks is None:
        return {"error": "timeout", "message": "the file operation took too long"}, b""
    line, found, data = b"".join(chunks).partition(b"\n")
    try:
        answer = json.loads(line) if found else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return {"error": "failed", "message": "the file helper ended without an answer"}, b""
    return answer, data


# -- PID 1 -----------------------------------------------------------------------------


class Child:
    """A forked, ready interpreter, seen from PID 1: its pipes and pid."""

    def __init__(self):
        ctl_r, self.ctl_w = os.pipe()
        self.status_r, status_w = os.pipe()
        self.out_r, out_w = os.pipe()
        self.err_r, err_w = os.pipe()
        self.pid = os.fork()
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
        self.out = Capture(b"o", rid, self.limit)
        self.err = Capture(b"e", rid, self.limit)
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
        self.child.send(STAY if self.stateful else ONCE, code, self.budget)

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
            doom_others()  # waiting for them to be gone happens after the answer
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
            send(b"p", self.rid, json.dumps(report).encode())

    def step(self, now):
        """Advance; True when the result has been sent."""
        runner = self.runner
        status = runner.exited.pop(self.pid, None)
        if status is not None:
            if self.status is None:
                self.end = self.end or now
                self.status = ("wait", status)
            if self.stateful:
                self.kernel_died(status)
            else:
                doom_others()  # the run ended: so does everything it started
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
        send(b"O", self.rid, bytes(self.out.tail))
        send(b"E", self.rid, bytes(self.err.tail))
        send(b"r", self.rid, json.dumps(result).encode())
        if self.runner.kernel is not self.child:
            # Done with it (it exits, or was killed): its exit is no one's news.
            self.runner.watched.discard(self.child.pid)
            self.child.close()


class Runner:
    def __init__(self):
        self.inbox = bytearray()
        self.stdin_open = True
        self.job = None
        self.spare = None  # a warm child waiting for its code
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
        if child is None:
            child = Child()
            self.watched.add(child.pid)
        return child

    def ensure_spare(self):
        # Forked as soon as a run has been answered, so its set-up (about 5 ms, most
        # of it copy-on-write faults) is off the next run's path unless that run comes
        # right away. A stateful sandbox needs one only when its interpreter is gone.
        if self.spare is None and self.kernel is None:
            self.spare = Child()
            self.watched.add(self.spare.pid)

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
        for _ in range(1000):
            self.reap()
            if keep is None:
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
        if len(self.inbox) >= FRAME.size and self.inbox[:1] == b"c":
            request = self.next_request()
            if request is not None and request[1] == self.job.rid:
                self.job.cancel(time.monotonic())

    def handle(self, kind, rid, payload):
        if kind == b"c":
            return  # the run it would stop has already been answered
        if kind == b"s":
            # A new connection: the echo tells the host where our frames begin.
            send(b"r", rid, payload[:64])
            return
        if kind == b"f":
            line, _, data = payload.partition(b"\n")
            answer, content = file_request(json.loads(line), data)
            if content:
                send(b"d", rid, content)
            send(b"r", rid, json.dumps(answer).encode())
            return
        if kind == b"x":
            line, _, code = payload.partition(b"\n")
            self.job = Job(self, rid, json.loads(line), code)
        elif kind == b"z":
            had = self.kernel is not None
            if had:
                kernel, self.kernel = self.kernel, None
                self.kill_others()
                self.forget(kernel)
            self.lost = None
            send(b"r", rid, json.dumps({"reset": True, "had_state": had}).encode())
            self.ensure_spare()
        else:
            send(b"r", rid, json.dumps({"error": "unknown request %r" % kind}).encode())

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
    global CODE_USER, CODE_DIR, CODE_NPROC
    # python3 -I -c SOURCE UID:GID DIR NPROC
    if len(sys.argv) >= 4:
        uid, _, gid = sys.argv[1].partition(":")
        CODE_USER, CODE_DIR = (int(uid), int(gid)), sys.argv[2]
        CODE_NPROC = int(sys.argv[3])
    set_dumpable(0)
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


main()
