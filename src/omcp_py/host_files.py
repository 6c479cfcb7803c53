"""Files of the user's machine, opt-in and confined: read from HOST_INPUT_DIRS, written
to HOST_OUTPUT_DIR. Nothing here runs unless the operator set those.

The path the model gives is walked from the configured directory one component at a
time with ``O_NOFOLLOW`` (a link anywhere on the way is refused, not followed; ``..``
is refused before anything is opened), the file is opened non-blocking (a FIFO never
hangs us) and must be a regular file; its size is checked on the open descriptor.
Output is created with ``O_EXCL`` inside the opened directory: an existing name gets a
new name, nothing is ever overwritten, and nothing is written anywhere else.

Blocking (file system): call it from a worker thread. Pure of Docker: unit-tested.
"""

import contextlib
import errno
import os
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from omcp_py.config import SandboxConfig, format_size
from omcp_py.errors import FileRefused

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_NAME = 255
_MAX_TRIES = 1000


@dataclass
class HostFile:
    """A file read from an input directory."""

    path: str  # as it is on the host
    data: bytes


def _allowed(config: SandboxConfig) -> str:
    dirs = config.host_input_dirs_list
    return "HOST_INPUT_DIRS allows " + (", ".join(dirs) if dirs else "no directory")


def _parts(host_path: str) -> list[str]:
    parts = PurePosixPath(host_path).parts
    for part in parts:
        if part in ("..", ".") or "\x00" in part:
            raise FileRefused(f"host_path may not contain '..', '.' or NUL: {host_path!r}.")
    return list(parts)


def _locate(config: SandboxConfig, host_path: str) -> tuple[str, list[str]]:
    """(input directory, components below it) of a path the model gave."""
    dirs = config.host_input_dirs_list
    if not dirs:
        raise FileRefused("No host directory may be read: HOST_INPUT_DIRS is not set.")
    if "\x00" in host_path or not host_path.strip():
        raise FileRefused(f"host_path is empty or holds NUL. {_allowed(config)}.")
    if not host_path.startswith("/"):
        if len(dirs) > 1:
            raise FileRefused(
                f"host_path {host_path[:200]!r} is relative, and there are {len(dirs)} input "
                f"directories: give an absolute path under one. {_allowed(config)}."
            )
        return dirs[0], _parts(host_path)
    parts = _parts(host_path)[1:]
    for directory in dirs:
        base = PurePosixPath(directory).parts[1:]
        if tuple(parts[: len(base)]) == base and len(parts) > len(base):
            return directory, parts[len(base) :]
    raise FileRefused(f"{host_path[:300]!r} is outside the input directories. {_allowed(config)}.")


def read_input(config: SandboxConfig, host_path: str, limit: int) -> HostFile:
    """The bytes of a regular file under an input directory, at most ``limit`` of them.

    Raises:
        FileRefused: outside the input directories, through a link, missing, not a
            regular file, or larger than ``limit``.
    """
    directory, parts = _locate(config, host_path)
    shown = str(PurePosixPath(directory, *parts))
    try:
        fd = os.open(directory, _DIR_FLAGS)
    except OSError as exc:
        raise FileRefused(
            f"The input directory {directory} cannot be opened ({exc.strerror}): check "
            f"HOST_INPUT_DIRS."
        ) from None
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ENOTDIR and _is_link(part, fd):
                    exc = OSError(errno.ELOOP, "a link")  # O_DIRECTORY answers first
                raise FileRefused(_why(shown, part, exc, config)) from None
            os.close(fd)
            fd = inner
        try:
            file_fd = os.open(
                parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd
            )
        except OSError as exc:
            raise FileRefused(_why(shown, parts[-1], exc, config)) from None
    finally:
        os.close(fd)
    info = os.fstat(file_fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(file_fd)
        raise FileRefused(f"{shown} is not a regular file: only regular files are copied.")
    with os.fdopen(file_fd, "rb") as handle:
        if info.st_size > limit:
            raise FileRefused(
                f"{shown} is {info.st_size:,} bytes, over MAX_UPLOAD_SIZE={format_size(limit)}."
            )
        data = handle.read(limit + 1)
    if len(data) > limit:  # it grew while we read
        raise FileRefused(f"{shown} is over MAX_UPLOAD_SIZE={format_size(limit)}.")
    return HostFile(path=shown, data=data)


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _why(shown: str, part: str, exc: OSError, config: SandboxConfig) -> str:
    if exc.errno == errno.ELOOP:
        return f"{shown}: {part!r} is a symbolic link, which is not followed. {_allowed(config)}."
    if exc.errno == errno.ENOENT:
        return f"{shown} does not exist. {_allowed(config)}."
    if exc.errno == errno.ENOTDIR:
        return f"{shown}: {part!r} is not a directory."
    return f"{shown} cannot be opened: {exc.strerror}."


def check_output_name(name: str) -> str:
    """A file name (no directory) for HOST_OUTPUT_DIR.

    Raises:
        FileRefused: empty, a path, a dot name, NUL, or too long.
    """
    if (
        not name
        or "/" in name
        or "\x00" in name
        or name in (".", "..")
        or len(name.encode("utf-8", "surrogatepass")) > _MAX_NAME
    ):
        raise FileRefused(
            f"name {name[:100]!r} must be a plain file name (no '/', not '.' or '..', at most "
            f"{_MAX_NAME} bytes): files go into HOST_OUTPUT_DIR itself."
        )
    return name


def safe_output_name(name: str) -> str:
    """A sandbox file's name as it may go into the user's folder: control and format
    characters (newlines, terminal escapes, bidirectional overrides that make
    ``txt.exe`` read as ``exe.txt``) and bytes that were not UTF-8 become ``_``, and a
    name too long to take a number (``name (12).csv``) is shortened before its
    extension. The result is shown to the model in ``host_path``."""
    cleaned = "".join("_" if unicodedata.category(ch)[0] == "C" else ch for ch in name)
    if cleaned in ("", ".", ".."):
        cleaned = "file"
    room = _MAX_NAME - len(f" ({_MAX_TRIES})")
    if len(cleaned.encode()) > room:
        stem, dot, suffix = _split(cleaned)
        suffix = suffix[:16]
        while stem and len(f"{stem}{dot}{suffix}".encode()) > room:
            stem = stem[:-1]
        cleaned = f"{stem or 'file'}{dot}{suffix}"
    return cleaned


def _split(name: str) -> tuple[str, str, str]:
    return name.partition(".") if not name.startswith(".") else (name, "", "")


def _candidates(name: str):
    yield name
    stem, dot, suffix = _split(name)
    for number in range(1, _MAX_TRIES):
        yield f"{stem} ({number}){dot}{suffix}"


def write_output(config: SandboxConfig, name: str, data: bytes) -> Path:
    """Create a new file in HOST_OUTPUT_DIR holding ``data``; an existing name gets a new
    name (``report (1).csv``). Returns where it was written.

    Raises:
        FileRefused: no output directory, a bad name, or the directory cannot be written.
    """
    directory = config.host_output_dir
    if not directory:
        raise FileRefused("No host directory may be written: HOST_OUTPUT_DIR is not set.")
    check_output_name(name)
    try:
        dir_fd = os.open(directory, _DIR_FLAGS)
    except OSError as exc:
        raise FileRefused(
            f"HOST_OUTPUT_DIR={directory} cannot be opened ({exc.strerror}): it must be an "
            f"existing directory, not a link."
        ) from None
    try:
        for candidate in _candidates(name):
            try:
                fd = os.open(
                    candidate,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o644,
                    dir_fd=dir_fd,
                )
            except FileExistsError:
                continue
            except OSError as exc:
                raise FileRefused(
                    f"{directory}/{candidate} cannot be created: {exc.strerror}."
                ) from None
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(candidate, dir_fd=dir_fd)
                raise FileRefused(
                    f"{directory}/{candidate} could not be written: {exc.strerror}."
                ) from None
            return Path(directory, candidate)
    finally:
        os.close(dir_fd)
    raise FileRefused(f"{directory} already holds {_MAX_TRIES} files named like {name!r}.")
