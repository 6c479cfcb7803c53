"""Host side of an execution: start ``sandbox_exec.py`` through a docker exec,
hand it the code on stdin, read its framed answer with a deadline of our own.

Blocking (sockets and Docker calls): call it from a worker thread.
"""

import json
import logging
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from omcp_py.runner import EXEC_SOURCE

log = logging.getLogger(__name__)

# The supervisor inside kills the code at its deadline; this much later we stop
# trusting it and kill from outside.
HOST_GRACE_SECONDS = 4.0
# Kills every process of the sandbox user except PID 1 and itself.
KILL_ALL_SOURCE = (
    "import os,signal,time\n"
    "for _ in range(200):\n"
    "    try:\n"
    "        os.kill(-1, signal.SIGKILL)\n"
    "    except OSError:\n"
    "        break\n"
    "    time.sleep(0.002)\n"
)
_DOCKER_HEADER = struct.Struct(">BxxxI")
_FRAME_HEADER = struct.Struct(">cI")
_DIAGNOSTIC_CAP = 16 * 1024


@dataclass
class RawExecution:
    """What one execution produced, before it becomes a tool result."""

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool
    oom_killed: bool
    duration_ms: float
    truncated: bool
    supervisor_lost: bool


class ExecStreamClosed(Exception):
    """The exec stream ended without a result: the container may be gone."""


class _Stream:
    """Head and tail of one output stream, bounded whatever the sender does."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.head_cap = limit // 2
        self.tail_cap = limit - self.head_cap
        self.head = bytearray()
        self.tail = b""
        self.dropped = 0

    def add_head(self, data: bytes) -> None:
        room = self.head_cap - len(self.head)
        self.head += data[:room]
        self.dropped += max(0, len(data) - room)

    def set_tail(self, data: bytes) -> None:
        self.dropped += max(0, len(data) - self.tail_cap)
        self.tail = data[-self.tail_cap :] if len(data) > self.tail_cap else data

    def text(self) -> str:
        head = bytes(self.head).decode("utf-8", errors="replace")
        tail = self.tail.decode("utf-8", errors="replace")
        if self.dropped:
            return (
                f"{head}\n[... {self.dropped:,} bytes of {self.name} left out "
                f"(OUTPUT_LIMIT keeps the head and the tail) ...]\n{tail}"
            )
        return head + tail


class _Reader:
    """Splits Docker's multiplexed exec stream, then our frames on its stdout."""

    def __init__(self, limit: int) -> None:
        self.buffer = bytearray()
        self.frames = bytearray()
        self.diagnostics = bytearray()
        self.stdout = _Stream("stdout", limit)
        self.stderr = _Stream("stderr", limit)
        self.result: dict[str, Any] | None = None
        self.max_frame = limit + 1024 * 1024

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= _DOCKER_HEADER.size:
            kind, size = _DOCKER_HEADER.unpack_from(self.buffer)
            end = _DOCKER_HEADER.size + size
            if len(self.buffer) < end:
                return
            payload = bytes(self.buffer[_DOCKER_HEADER.size : end])
            del self.buffer[:end]
            if kind == 1:
                self._feed_frames(payload)
            elif len(self.diagnostics) < _DIAGNOSTIC_CAP:
                self.diagnostics += payload[: _DIAGNOSTIC_CAP - len(self.diagnostics)]

    def _feed_frames(self, data: bytes) -> None:
        self.frames += data
        while len(self.frames) >= _FRAME_HEADER.size:
            kind, size = _FRAME_HEADER.unpack_from(self.frames)
            if size > self.max_frame:
                raise ExecStreamClosed(f"oversized frame {kind!r} of {size} bytes")
            end = _FRAME_HEADER.size + size
            if len(self.frames) < end:
                return
            payload = bytes(self.frames[_FRAME_HEADER.size : end])
            del self.frames[:end]
            if kind == b"o":
                self.stdout.add_head(payload)
            elif kind == b"e":
                self.stderr.add_head(payload)
            elif kind == b"O":
                self.stdout.set_tail(payload)
            elif kind == b"E":
                self.stderr.set_tail(payload)
            elif kind == b"r":
                self.result = json.loads(payload)


def kill_all(api: Any, container_id: str) -> None:
    """Kill every process of the sandbox user in the container (not PID 1).

    Args:
        api: a ``docker.APIClient``.
        container_id: the sandbox container.
    """
    exec_id = api.exec_create(container_id, ["python3", "-I", "-c", KILL_ALL_SOURCE])["Id"]
    api.exec_start(exec_id)


def run_code(api: Any, container_id: str, code: bytes, timeout: float, limit: int) -> RawExecution:
    """Run ``code`` once in the container and collect its result.

    Args:
        api: a ``docker.APIClient``.
        container_id: a running sandbox container.
        code: UTF-8 source, already validated.
        timeout: seconds before every process of the run is killed.
        limit: bytes kept per output stream.

    Returns:
        The execution's outcome; user code that fails is a normal outcome.

    Raises:
        ExecStreamClosed: the stream ended with no result and no sign of the
            supervisor's own exit (the container stopped or was removed).
        docker.errors.APIError: the engine refused the exec.
    """
    started = time.monotonic()
    exec_id = api.exec_create(
        container_id,
        ["python3", "-I", "-c", EXEC_SOURCE],
        stdin=True,
        stdout=True,
        stderr=True,
    )["Id"]
    sock = api.exec_start(exec_id, socket=True)
    raw: socket.socket = getattr(sock, "_sock", sock)
    reader = _Reader(limit)
    deadline = started + timeout + HOST_GRACE_SECONDS
    lost = False
    try:
        header = json.dumps({"timeout": timeout, "limit": limit, "code_len": len(code)})
        raw.settimeout(max(1.0, timeout))
        raw.sendall(header.encode() + b"\n" + code)
        raw.shutdown(socket.SHUT_WR)
        while reader.result is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                lost = True
                break
            raw.settimeout(remaining)
            try:
                data = raw.recv(256 * 1024)
            except TimeoutError:
                lost = True
                break
            if not data:
                break
            reader.feed(data)
    except OSError as exc:
        log.debug("exec stream of %s failed: %s", container_id[:12], exc)
    finally:
        raw.close()

    if reader.result is None:
        if reader.diagnostics:
            log.warning(
                "sandbox supervisor said: %s", reader.diagnostics.decode("utf-8", "replace")
            )
        if not api.inspect_container(container_id)["State"].get("Running"):
            raise ExecStreamClosed("the container stopped during the execution")
        # The supervisor was killed (by the code, or by our deadline): clean up
        # from outside so nothing the code started keeps running.
        kill_all(api, container_id)
        return RawExecution(
            stdout=reader.stdout.text(),
            stderr=reader.stderr.text(),
            exit_code=137,
            timed_out=lost,
            oom_killed=False,
            duration_ms=round((time.monotonic() - started) * 1000, 3),
            truncated=bool(reader.stdout.dropped or reader.stderr.dropped),
            supervisor_lost=not lost,
        )

    result = reader.result
    dropped_out, dropped_err = result.get("dropped", [0, 0])
    reader.stdout.dropped += dropped_out
    reader.stderr.dropped += dropped_err
    return RawExecution(
        stdout=reader.stdout.text(),
        stderr=reader.stderr.text(),
        exit_code=int(result["exit_code"]),
        timed_out=bool(result["timed_out"]),
        oom_killed=bool(result["oom_killed"]),
        duration_ms=float(result["duration_ms"]),
        truncated=bool(reader.stdout.dropped or reader.stderr.dropped),
        supervisor_lost=False,
    )
