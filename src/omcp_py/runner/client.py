"""Host side of a sandbox's runner: the container's own stdin and stdout, reached
with docker attach, carrying framed requests and answers (pid1/protocol.py).

Blocking (sockets and Docker calls): call it from a worker thread, one request at a
time per connection.
"""

import contextlib
import itertools
import json
import logging
import math
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from omcp_py.boundary import Figure, check_figures, clean
from omcp_py.cancel import Stop
from omcp_py.hardening import SANDBOX_USER, python_command
from omcp_py.runner.pid1.protocol import (
    CANCEL,
    DATA,
    EXECUTE,
    FILES,
    FRAME,
    PROGRESS,
    RESET,
    RESULT,
    STDERR,
    STDERR_TAIL,
    STDOUT,
    STDOUT_TAIL,
    SYNC,
)

log = logging.getLogger(__name__)

# The runner kills the code at its deadline; this much later we stop trusting it
# and kill from outside.
HOST_GRACE_SECONDS = 4.0
# Kills every process of the sandbox user except PID 1 (the runner) and itself.
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
_DIAGNOSTIC_CAP = 16 * 1024
SYNC_SECONDS = 15.0  # for the runner's echo on a new connection


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
    state: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False
    # The run's figures, in order, checked again here (boundary.check_figures).
    figures: list[Figure] = field(default_factory=list)
    images_left_out: int = 0
    images_left_out_why: list[str] = field(default_factory=list)


# Called with (seconds elapsed, bytes of stdout so far, bytes of stderr so far).
ExecutionProgress = Callable[[float, int, int], None]


class RunnerGone(Exception):
    """The attach stream ended or failed: the container may be gone."""


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


class FrameReader:
    """PID 1's frames out of what the attach stream delivers: Docker's multiplexing
    first (stdout is ours, stderr the runner's own complaints, logged), then the frames
    of pid1/protocol.py, each held to a size limit. Pure: fed bytes, never reads."""

    def __init__(self, name: str) -> None:
        self.name = name  # the container, in logs
        self._docker = bytearray()
        self._frames = bytearray()

    def feed(self, data: bytes) -> None:
        self._docker += data

    def clear(self) -> None:
        self._docker.clear()
        self._frames.clear()

    def skip_to(self, marker: bytes) -> bool:
        """Drop everything up to and including ``marker``; False while it has not come
        (all but a marker's length of what came is dropped already)."""
        self._demux()
        at = self._frames.find(marker)
        if at >= 0:
            del self._frames[: at + len(marker)]
            return True
        del self._frames[: max(0, len(self._frames) - len(marker))]
        return False

    def _demux(self) -> None:
        while len(self._docker) >= _DOCKER_HEADER.size:
            stream, size = _DOCKER_HEADER.unpack_from(self._docker)
            end = _DOCKER_HEADER.size + size
            if len(self._docker) < end:
                break
            payload = bytes(self._docker[_DOCKER_HEADER.size : end])
            del self._docker[:end]
            if stream == 1:
                self._frames += payload
            else:
                log.warning(
                    "sandbox runner %s said: %s",
                    self.name[:12],
                    payload[:_DIAGNOSTIC_CAP].decode("utf-8", "replace").rstrip(),
                )

    def parse(
        self, rid: int, collected: "_Collected | _Blob | None", max_frame: int
    ) -> dict[str, Any] | None:
        """The answer of request ``rid`` once its RESULT frame is whole, else None; its
        other frames go to ``collected``, frames of an abandoned request are skipped.

        Raises:
            RunnerGone: a frame over ``max_frame``: the stream cannot be trusted.
        """
        self._demux()
        while len(self._frames) >= FRAME.size:
            kind, frame_rid, size = FRAME.unpack_from(self._frames)
            if size > max_frame:
                raise RunnerGone(f"oversized frame {kind!r} of {size} bytes")
            end = FRAME.size + size
            if len(self._frames) < end:
                return None
            payload = bytes(self._frames[FRAME.size : end])
            del self._frames[:end]
            if frame_rid != rid:
                continue
            if kind == RESULT:
                return _answer(payload)
            if collected is not None:
                collected.add(kind, payload)
        return None


class RunnerConnection:
    """The host's end of one sandbox's runner (PID 1), over docker attach."""

    def __init__(self, api: Any, container_id: str) -> None:
        """Args:
        api: a ``docker.APIClient``.
        container_id: a sandbox container created with ``stdin_open``.
        """
        self.api = api
        self.container_id = container_id
        self._ids = itertools.count(1)
        self._handle: Any = None
        self._sock: socket.socket | None = None
        self.reader = FrameReader(container_id)
        # Reentrant: a cancel may be sent from inside the send of the request itself.
        self._send_lock = threading.RLock()

    def connect(self) -> None:
        """Attach to the container's stdin and stdout (blocking; idempotent).

        Raises:
            docker.errors.APIError: the engine refused (e.g. the container is gone).
        """
        if self._sock is not None:
            return
        params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        # Keep the SDK's wrapper alive: it owns the socket.
        self._handle = self.api.attach_socket(self.container_id, params=params)
        self._sock = getattr(self._handle, "_sock", self._handle)
        self.reader.clear()
        self._sync()

    def _sync(self) -> None:
        """Find where the runner's frames begin on a new connection.

        A connection that broke mid-frame (an engine outage, a proxy going away) leaves
        the rest of that frame to arrive on the next one, which would read as garbage
        from then on. The runner echoes a random nonce; everything before the echo is
        dropped.

        Raises:
            RunnerGone: no echo within SYNC_SECONDS (the runner is busy with a run the
                host gave up on, or gone); the next call attaches again.
        """
        sock = self._sock
        assert sock is not None
        nonce = os.urandom(16).hex().encode()
        rid = next(self._ids)
        echo = FRAME.pack(RESULT, rid, len(nonce)) + nonce
        deadline = time.monotonic() + SYNC_SECONDS
        with self._closed_when_broken():
            sock.settimeout(SYNC_SECONDS)
            with self._send_lock:
                sock.sendall(FRAME.pack(SYNC, rid, len(nonce)) + nonce)
            while not self.reader.skip_to(echo):
                if not self._read_more(sock, deadline):
                    raise RunnerGone("the runner did not answer on a new connection")

    def open(self) -> bool:
        """False when the attach stream has ended (the runner or the engine closed it);
        True while it is open, or before the first attach."""
        sock = self._sock
        if sock is None:
            return True
        if getattr(sock, "pending", lambda: 0)():
            return True  # TLS has decrypted bytes waiting: open
        return transport_open(sock)

    def close(self) -> None:
        """Drop the connection; the runner keeps running and the next call re-attaches."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._handle = None

    def execute(
        self,
        code: bytes,
        *,
        timeout: float,
        limit: int,
        stateful: bool,
        guard: int = 0,
        images: int = 0,
        progress: ExecutionProgress | None = None,
        stop: Stop | None = None,
    ) -> RawExecution:
        """Run code once and collect its result.

        Args:
            code: UTF-8 source, already validated.
            timeout: seconds before every process of the run is killed.
            limit: bytes kept per output stream.
            stateful: run in the sandbox's long-lived interpreter.
            guard: kill the run when the sandbox uses more memory than this, in bytes
                (0: never; the kernel's out-of-memory killer is enough).
            images: bytes (before base64) the figures of the run may take together
                (0: none come back).
            progress: called every couple of seconds while the code runs.
            stop: when it is stopped, the runner ends the run at once (the result then
                says ``cancelled``).

        Returns:
            The outcome; user code that fails is a normal outcome.

        Raises:
            RunnerGone: the stream ended with no result (the container stopped?).
            docker.errors.APIError: the engine refused to attach.
        """
        started = time.monotonic()
        self.connect()
        rid = next(self._ids)
        header = json.dumps(
            {
                "timeout": timeout,
                "limit": limit,
                "stateful": stateful,
                "guard": guard,
                "images": images,
            }
        )
        collected = _Collected(limit, progress)

        def cancellable() -> None:
            # Registered once the request is out, so the cancel always follows it.
            if stop is not None:
                stop.on_stop(lambda: self._send_quietly(CANCEL, rid))

        reply = self._request(
            EXECUTE,
            rid,
            header.encode() + b"\n" + code,
            started + timeout + HOST_GRACE_SECONDS,
            collected,
            max_frame=2 * limit + images * 2 + 1024 * 1024,
            sent=cancellable,
        )
        if reply is None:
            # The runner did not answer in time: end everything from outside (PID 1
            # is exempt) so nothing the code started keeps running.
            kill_all(self.api, self.container_id)
            return RawExecution(
                stdout=collected.stdout.text(),
                stderr=collected.stderr.text(),
                exit_code=137,
                timed_out=True,
                oom_killed=False,
                duration_ms=round((time.monotonic() - started) * 1000, 3),
                truncated=bool(collected.stdout.dropped or collected.stderr.dropped),
                supervisor_lost=True,
            )
        return raw_result(reply, collected, image_budget=images * 4 // 3 + 4)

    def _send_quietly(self, kind: bytes, rid: int) -> None:
        # From another thread: a failure here shows in the request's own thread.
        with self._send_lock:
            sock = self._sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.sendall(FRAME.pack(kind, rid, 0))

    def file_op(
        self, request: dict[str, Any], content: bytes = b"", timeout: float = 60.0
    ) -> tuple[dict[str, Any], bytes]:
        """Put, get or list files in the sandbox, as its code's user.

        Args:
            request: {"op": "put" | "get" | "list", "path": ..., "max": bytes}.
            content: what to put.
            timeout: seconds to wait for the answer.

        Returns:
            The runner's answer ({"error", "message"} when refused) and the content got.

        Raises:
            RunnerGone: no answer (the container stopped?).
        """
        self.connect()
        blob = _Blob()
        payload = json.dumps(request).encode() + b"\n" + content
        reply = self._request(
            FILES,
            next(self._ids),
            payload,
            time.monotonic() + timeout,
            blob,
            max_frame=int(request.get("max") or 0) + 1024 * 1024,
        )
        if reply is None:
            raise RunnerGone("the sandbox did not answer the file request in time")
        return reply, bytes(blob.data)

    def reset(self, timeout: float = 10.0) -> bool:
        """End the stateful interpreter, if any.

        Returns:
            True when there was state to drop.

        Raises:
            RunnerGone: no answer (the container stopped?).
        """
        self.connect()
        reply = self._request(
            RESET, next(self._ids), b"", time.monotonic() + timeout, None, max_frame=1024 * 1024
        )
        if reply is None:
            raise RunnerGone("the runner did not answer the reset")
        return bool(reply.get("had_state"))

    def _request(
        self,
        kind: bytes,
        rid: int,
        payload: bytes,
        deadline: float,
        collected: "_Collected | _Blob | None",
        max_frame: int,
        sent: Callable[[], None] | None = None,
    ) -> dict[str, Any] | None:
        """Send one request and read until its result; None at the deadline."""
        sock = self._sock
        assert sock is not None
        with self._closed_when_broken():
            sock.settimeout(max(10.0, len(payload) / (1024 * 1024)))
            with self._send_lock:
                sock.sendall(FRAME.pack(kind, rid, len(payload)) + payload)
                if sent is not None:
                    sent()
            while True:
                result = self.reader.parse(rid, collected, max_frame)
                if result is not None:
                    return result
                if not self._read_more(sock, deadline):
                    return None

    def _read_more(self, sock: socket.socket, deadline: float) -> bool:
        """Read what the runner sent next; False when the deadline comes first."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            data = sock.recv(256 * 1024)
        except TimeoutError:
            return False
        if not data:
            raise RunnerGone("the container's output ended")
        self.reader.feed(data)
        return True

    @contextlib.contextmanager
    def _closed_when_broken(self) -> Iterator[None]:
        """A connection that failed is dropped (the next call attaches again)."""
        try:
            yield
        except OSError as exc:
            self.close()
            raise RunnerGone(f"the connection to the runner failed: {exc}") from None
        except RunnerGone:
            self.close()
            raise


def transport_open(sock: Any) -> bool:
    """Whether the connection under ``sock`` has not seen its end, without reading.

    Peeks on a duplicate of the file descriptor, so that it works the same for a unix
    socket, for TCP under TLS (an ``SSLSocket`` refuses recv flags; the bytes peeked
    are the TLS records, and only the end of the stream matters here), and without
    changing the socket's blocking mode under a reader in another thread.
    """
    try:
        fd = sock.fileno()
    except (OSError, AttributeError):
        return True  # no descriptor to look at (a pipe): the next read will tell
    if fd < 0:
        return False  # closed here
    with socket.socket(fileno=os.dup(fd)) as raw:
        try:
            return raw.recv(1, socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)) != b""
        except BlockingIOError:
            return True  # nothing to read: open
        except OSError:
            return False


def raw_result(reply: dict[str, Any], collected: "_Collected", image_budget: int) -> RawExecution:
    """An execution's outcome from the runner's answer and the output collected, every
    field checked (the answer passed through PID 1, but is held to its shape again).

    Args:
        reply: the runner's ``r`` frame, decoded.
        collected: the output frames of the run.
        image_budget: base64 bytes the figures may take together.
    """
    try:
        dropped_out, dropped_err = (int(n) for n in reply.get("dropped") or (0, 0))
    except (TypeError, ValueError, OverflowError):
        dropped_out = dropped_err = 0
    collected.stdout.dropped += max(0, dropped_out)
    collected.stderr.dropped += max(0, dropped_err)
    figures = check_figures(reply.get("images"), reply.get("images_left_out"), budget=image_budget)
    said = reply.get("images_left_out_why")
    why = [str(w)[:100] for w in said[:5]] if isinstance(said, list) else []
    why += [w for w in figures.reasons if w not in why]
    state = reply.get("state")
    return RawExecution(
        stdout=collected.stdout.text(),
        stderr=collected.stderr.text(),
        exit_code=_number(reply.get("exit_code"), int, default=-1),
        timed_out=bool(reply.get("timed_out")),
        oom_killed=bool(reply.get("oom_killed")),
        duration_ms=_number(reply.get("duration_ms"), float, default=0.0),
        truncated=bool(collected.stdout.dropped or collected.stderr.dropped),
        supervisor_lost=False,
        state=state if isinstance(state, dict) else {},
        cancelled=bool(reply.get("cancelled")),
        figures=figures.figures,
        images_left_out=figures.left_out,
        images_left_out_why=why,
    )


def _answer(payload: bytes) -> dict[str, Any]:
    """A runner's answer frame: a JSON object, its text made valid UTF-8."""
    try:
        answer = json.loads(payload.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        raise RunnerGone("the runner sent an answer that is not JSON") from None
    if not isinstance(answer, dict):
        raise RunnerGone("the runner sent an answer that is not a JSON object")
    return clean(answer)


def _number(value: Any, kind: type, default: Any) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return number if math.isfinite(number) and abs(number) < 2**53 else default


class _Collected:
    """Output of one execution, bounded whatever the runner sends."""

    def __init__(self, limit: int, progress: ExecutionProgress | None = None) -> None:
        self.limit = limit
        self.stdout = _Stream("stdout", limit)
        self.stderr = _Stream("stderr", limit)
        self.progress = progress

    def add(self, kind: bytes, payload: bytes) -> None:
        if kind == PROGRESS:
            if self.progress is not None:
                try:
                    report = json.loads(payload)
                    elapsed = float(report["elapsed"])
                    out, err = int(report["stdout"]), int(report["stderr"])
                except (ValueError, KeyError, TypeError):
                    return
                self.progress(elapsed, out, err)
            return
        if kind == STDOUT:
            self.stdout.add_head(payload)
        elif kind == STDERR:
            self.stderr.add_head(payload)
        elif kind == STDOUT_TAIL:
            self.stdout.set_tail(payload)
        elif kind == STDERR_TAIL:
            self.stderr.set_tail(payload)


class _Blob:
    """The content of a file got from the sandbox."""

    def __init__(self) -> None:
        self.data = bytearray()

    def add(self, kind: bytes, payload: bytes) -> None:
        if kind == DATA:
            self.data += payload


def kill_all(api: Any, container_id: str) -> None:
    """Kill every process of the sandbox user in the container (not PID 1).

    Args:
        api: a ``docker.APIClient``.
        container_id: the sandbox container.
    """
    # As the sandbox user: its kill(-1) reaches every process of the code and cannot
    # reach PID 1, which runs as root.
    command = python_command(KILL_ALL_SOURCE)
    exec_id = api.exec_create(container_id, command, user=SANDBOX_USER)["Id"]
    api.exec_start(exec_id)
