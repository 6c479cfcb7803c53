"""Files for the host's file tools: put, get and list, done by a helper that is
the code's user, walking paths one directory at a time without following links."""

import binascii
import errno
import json
import os
import select
import signal
import stat
import time

from omcp_py.runner.pid1.become import CODE, become_code_user, close_all_but
from omcp_py.runner.pid1.procs import write_all
from omcp_py.runner.pid1.protocol import LIST_BYTES, LIST_LIMIT, READ_CHUNK, TARGET_CHARS

# Done by a fork that becomes the code's user first, like a run: it can reach nothing the
# code cannot, and it walks the path one directory at a time without following a link,
# so a link the code planted cannot lead it anywhere. PID 1 itself never opens a path.
FILE_ROOTS = ("/tmp",)  # besides the code's directory: the other place it can write
FILE_OP_SECONDS = 30.0  # a file helper that takes longer is killed


class Refused(Exception):
    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message


def shown_path(root, parts):
    return "/".join([root.rstrip("/")] + list(parts)) if parts else root


def split_path(path):
    """(root, components) of a path the host sent; refuses what leaves the roots."""
    roots = (CODE.dir,) + FILE_ROOTS
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
        root, rest = CODE.dir, path
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
    root, parts = split_path(request.get("path") or CODE.dir)
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
