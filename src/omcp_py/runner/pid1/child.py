"""The processes that run code: one run (stateless) or a kernel that stays
(stateful), fed by PID 1 over a control pipe."""

import atexit
import json
import linecache
import os
import struct
import sys
import traceback
import types

from omcp_py.runner.pid1.become import CODE, become_code_process, new_main
from omcp_py.runner.pid1.figures import SHOWN, encode_figures, take_figures
from omcp_py.runner.pid1.procs import set_name, write_all
from omcp_py.runner.pid1.protocol import READ_CHUNK


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


def packages_stamp():
    """What changes when an install adds, replaces or removes a distribution: the
    user site directory's identity and modification time (None: none yet)."""
    if not os.environ.get("PYTHONUSERBASE"):
        return None
    import site

    try:
        found = os.stat(site.getusersitepackages())
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns


def preload(names):
    """Import the modules the image has among ``names``, quietly: what they print
    would otherwise be the next run's output. One that fails is left out.

    Returns:
        How many were imported.
    """
    import importlib
    import importlib.util

    imported = 0
    if not names:
        return imported
    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    try:
        for name in names:
            try:
                if importlib.util.find_spec(name.split(".")[0]) is not None:
                    importlib.import_module(name)
                    imported += 1
            except BaseException:
                pass
    finally:
        flush_stdio()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)
    return imported


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


def child_main(ctl_r, status_w, out_w=None, err_w=None, forked_by_zygote=False):
    """A warm child: set up ahead of need, then runs what PID 1 sends it. Forked by
    PID 1 it becomes the code's process and imports SANDBOX_PRELOAD itself; forked by
    the zygote it is both already."""
    set_name(b"omcp-ready")
    if not forked_by_zygote:
        become_code_process(out_w, err_w, keep=(ctl_r, status_w))
    main = new_main()
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
    if not forked_by_zygote:
        preload(CODE.preload)

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
