"""An engine reached over ssh, as the docker CLI reaches one: for each connection,
``ssh [user@]host docker system dial-stdio`` on the engine's host, which speaks to
the engine there (its DOCKER_HOST or default socket).

docker-py's own ssh transport needs paramiko even to run the ssh client, and its
socket over the client's pipes ignores timeouts: a stalled link would hang a tool.
Here docker-py talks to a unix socket of the server's own (in a private directory),
and each connection to it is carried by one ssh process: every timeout, attach and
peek of the server works as on a local engine, and the user's ssh configuration,
keys, agent and known hosts apply. ssh runs in batch mode: it never prompts.
"""

import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

_CHUNK = 256 * 1024
_CONNECT_SECONDS = 15


def ssh_command(url: str) -> list[str]:
    """The ssh command line for ``ssh://[user@]host[:port]``.

    Raises:
        ValueError: the address is not of that form.
    """
    parts = urlsplit(url)
    if parts.scheme != "ssh" or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"{url!r} is not ssh://[user@]host[:port]")
    command = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={_CONNECT_SECONDS}"]
    if parts.username:
        command += ["-l", parts.username]
    if parts.port:
        command += ["-p", str(parts.port)]
    return [*command, "--", parts.hostname, "docker", "system", "dial-stdio"]


class SshBridge:
    """A local unix socket whose connections are carried to the engine by ssh."""

    def __init__(self, url: str) -> None:
        """Check the address and open the socket (no ssh runs until a connection).

        Raises:
            ValueError: ``url`` is not an ssh:// address.
            FileNotFoundError: there is no ssh client on PATH.
        """
        self.command = ssh_command(url)
        if shutil.which("ssh") is None:
            raise FileNotFoundError("no ssh client (ssh) on PATH, needed for an ssh:// engine")
        self._dir = Path(tempfile.mkdtemp(prefix="omcp-ssh-"))  # 0700: ours alone
        self.path = self._dir / "engine.sock"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(64)
        self._closed = threading.Event()
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self.last_error = ""
        threading.Thread(target=self._accept, name="omcp-ssh-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(
                target=self._carry, args=(conn,), name="omcp-ssh-conn", daemon=True
            ).start()

    def _carry(self, conn: socket.socket) -> None:
        try:
            proc = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a ^C to the server is not one to ssh
            )
        except OSError as exc:
            self.last_error = f"ssh did not start: {exc}"
            conn.close()
            return
        with self._lock:
            self._procs.add(proc)
        to_engine = threading.Thread(target=self._to_engine, args=(conn, proc), daemon=True)
        to_engine.start()
        try:
            while chunk := proc.stdout.read1(_CHUNK):
                conn.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            self._end(proc)

    def _to_engine(self, conn: socket.socket, proc: subprocess.Popen) -> None:
        try:
            while chunk := conn.recv(_CHUNK):
                proc.stdin.write(chunk)
                proc.stdin.flush()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def _end(self, proc: subprocess.Popen) -> None:
        with contextlib.suppress(OSError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        error = b""
        with contextlib.suppress(OSError, ValueError):
            error = proc.stderr.read(4096)
            proc.stderr.close()
        if proc.returncode not in (0, -9) and error.strip():
            # ssh's own words for a failed connection: "Permission denied (publickey)".
            self.last_error = error.decode(errors="replace").strip().splitlines()[-1][:300]
            log.warning("ssh to the engine: %s", self.last_error)
        with self._lock:
            self._procs.discard(proc)

    def close(self) -> None:
        """Stop listening and end every ssh process; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def failure(self, wait: float = 2.0) -> str:
        """What ssh said when a connection failed (it may still be exiting)."""
        deadline = time.monotonic() + wait
        while not self.last_error and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.last_error
