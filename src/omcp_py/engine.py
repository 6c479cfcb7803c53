"""The connection to the Docker engine: made on first use, remade after a failure;
and the one place docker-py's exceptions are translated: connection failures and
refusals into our errors (``Engine.errors()``), and the few refusals callers act on
told apart (``refusal()``: status codes first, the engine's words only where it gives
nothing else, as docker-py's own ``errors.py`` maps HTTP answers in one function).

The docker SDK is imported here, lazily, so that importing omcp_py (and starting
the server) costs nothing when Docker is slow or absent.
"""

import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from omcp_py.dialects import DOCKER, adapt, dropped, kind_of
from omcp_py.docker_host import EngineCandidate, locate
from omcp_py.errors import DockerUnavailable, EngineError, IsolationUnavailable
from omcp_py.ssh_bridge import SshBridge

log = logging.getLogger(__name__)


class Engine:
    """A lazily connected ``docker.DockerClient`` that reconnects after failures."""

    def __init__(self, base_url: str | None, timeout: int) -> None:
        """Prepare the connection; nothing is contacted yet.

        Args:
            base_url: engine URL (SANDBOX_BASE_URL); None means DOCKER_HOST or the default.
            timeout: seconds for one API call.
        """
        self._base_url = base_url
        self._timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()
        self._where: EngineCandidate | None = None

    @property
    def where(self) -> EngineCandidate:
        """Where the engine is looked for (settings, docker context, usual sockets)."""
        if self._where is None:
            self._where = locate(self._base_url)
        return self._where

    @property
    def url(self) -> str:
        """The engine address this server talks to, for messages."""
        return self.where.url

    def unreachable(self, reason: object = None) -> DockerUnavailable:
        """The error every tool gives while the engine cannot be reached."""
        detail = f" ({reason})" if reason else ""
        error = DockerUnavailable(
            f"Docker engine not reachable at {self.url} ({self.where.source}){detail}: "
            f"start Docker, or set DOCKER_HOST (or SANDBOX_BASE_URL) to the engine's socket; "
            f"`omcp_py doctor` shows where it looked."
        )
        error.reason = str(reason or "no answer")
        return error

    def client(self) -> Any:
        """The connected client, connecting first if needed (blocking).

        Raises:
            DockerUnavailable: the engine does not answer.
        """
        with self._lock:
            if self._client is None:
                import docker

                # Looked up again at each connection: Docker Desktop or Colima may
                # have started since.
                self._where = locate(self._base_url)
                try:
                    client = connect(self._where, self._timeout)
                except docker.errors.DockerException as exc:
                    if read_timed_out(exc):
                        raise self._too_slow() from None
                    raise self.unreachable(_short(exc)) from None
                log.info("connected to the Docker engine at %s (%s)", self.url, self.where.source)
                self._client = client
            return self._client

    def reset(self) -> None:
        """Forget the connection so the next call connects again."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # a dead connection may fail to close
                client.close()
            bridge = _BRIDGES.pop(client, None)
            if bridge is not None:
                bridge.close()

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Turn connection failures into DockerUnavailable (dropping the dead client),
        and any other failed request into EngineError with the engine's explanation."""
        import docker
        import requests

        try:
            yield
        except docker.errors.APIError as exc:
            raise EngineError(
                f"The Docker engine failed the request: {exc.explanation or exc}. "
                f"Try again; if it persists, check the engine (docker info)."
            ) from None
        except (requests.exceptions.ConnectionError, ConnectionError) as exc:
            self.reset()
            if read_timed_out(exc):
                raise self._too_slow() from None
            raise self.unreachable(_short(exc)) from None
        except requests.exceptions.Timeout:
            self.reset()
            raise self._too_slow() from None

    def _too_slow(self) -> DockerUnavailable:
        return DockerUnavailable(
            f"Docker engine at {self.url} did not answer within DOCKER_TIMEOUT: "
            f"check that it is healthy (docker info), then try again."
        )

    def close(self) -> None:
        """Close the connection, if any."""
        self.reset()


def connect(where: EngineCandidate, timeout: int) -> Any:
    """A docker client for ``where``, with TLS as the docker CLI would use it there,
    or through an ssh bridge for ssh://.

    Raises:
        docker.errors.DockerException: no client, or the engine did not answer.
    """
    import docker

    bridge = None
    if where.url.startswith("ssh://"):
        try:
            bridge = SshBridge(where.url)
        except (ValueError, OSError) as exc:
            raise docker.errors.DockerException(str(exc)) from None
        client = docker.DockerClient(base_url=bridge.url, version=_ASKED_LATER, timeout=timeout)
    elif where.source in ("DOCKER_HOST", "SANDBOX_BASE_URL"):
        # The CLI's conventions: DOCKER_TLS_VERIFY and DOCKER_CERT_PATH go with the address.
        environment = {**os.environ, "DOCKER_HOST": where.url}
        client = docker.from_env(version=_ASKED_LATER, timeout=timeout, environment=environment)
    else:
        client = docker.DockerClient(
            base_url=where.url, version=_ASKED_LATER, timeout=timeout, tls=_context_tls(where)
        )
    # requests would otherwise put REQUESTS_CA_BUNDLE (set behind TLS-intercepting
    # proxies) in place of the engine's CA, and send the engine's TCP through
    # HTTPS_PROXY: the engine is reached directly, trusting only its own CA.
    client.api.trust_env = False
    try:
        # What "auto" would have asked in the constructor, asked now that it goes
        # direct; the same answer says whether the engine is Podman.
        answer = client.api.version(api_version=False)
        if not isinstance(answer, dict) or not answer.get("ApiVersion"):
            raise docker.errors.DockerException("the engine's /version names no API version")
    except Exception as exc:  # requests' errors: the cause is in them (_short)
        said = bridge.failure() if bridge is not None else ""
        client.close()
        if bridge is not None:
            bridge.close()
        if said:
            raise docker.errors.DockerException(f"ssh: {said}") from None
        if isinstance(exc, docker.errors.DockerException):
            raise
        raise docker.errors.DockerException(f"no answer to /version: {exc}") from exc
    client.api._version = str(answer["ApiVersion"])
    _KINDS[client] = kind_of(answer)
    if bridge is not None:
        _BRIDGES[client] = bridge
    return client


def _context_tls(where: EngineCandidate) -> Any:
    """The TLS of a docker context, from the files `docker context create` kept."""
    import docker

    if where.tls_dir is None or not where.url.startswith("tcp://"):
        return None
    files = {name: where.tls_dir / f"{name}.pem" for name in ("ca", "cert", "key")}
    pair = (str(files["cert"]), str(files["key"]))
    return docker.tls.TLSConfig(
        client_cert=pair if files["cert"].is_file() and files["key"].is_file() else None,
        ca_cert=str(files["ca"]) if files["ca"].is_file() else None,
        verify=where.tls_verify,
    )


_ASKED_LATER = "1.24"  # docker-py's minimum, replaced by the engine's own at once
# The ssh bridge of a client, closed with it (Engine.reset) or when it is collected.
_BRIDGES: "weakref.WeakKeyDictionary[Any, SshBridge]" = weakref.WeakKeyDictionary()
_KINDS: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def kind(client: Any) -> str:
    """``docker`` or ``podman``: which engine this client reached."""
    return _KINDS.get(client, DOCKER)


def create_container(client: Any, **kwargs: Any) -> Any:
    """Every container the server makes is made here: its run arguments adapted to
    the engine (``dialects``), and what the engine reports it applied compared with
    what was asked. A limit it dropped removes the container: no sandbox runs without.

    Raises:
        IsolationUnavailable: the engine did not apply part of the hardening.
        docker.errors.APIError: the engine refused.
    """
    engine_kind = kind(client)
    asked = adapt(kwargs, engine_kind)
    container = client.containers.create(**asked)
    missing = dropped(asked, container.attrs, engine_kind)
    if missing:
        with contextlib.suppress(Exception):  # it never started: removal is tidying
            container.remove(force=True)
        raise IsolationUnavailable(
            f"The {engine_kind} engine created a container without {'; '.join(missing)}: "
            f"omcp_py runs nothing without its hardening. Use an engine that applies it "
            f"(rootful, with the cgroup controllers enabled)."
        )
    return container


def read_timed_out(exc: BaseException) -> bool:
    """True when a failed request was a read timeout: over a unix socket the docker
    SDK reports one as a ConnectionError, not as requests' Timeout."""
    return "timed out" in str(exc)


def _short(exc: BaseException) -> str:
    """The root cause in a few words: requests and urllib3 nest it deeply."""
    cause = _os_error(exc)
    if isinstance(cause, FileNotFoundError):
        return "no engine socket at that path"
    if isinstance(cause, PermissionError):
        return "permission denied on the engine socket: add your user to the docker group"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if cause is not None and cause.strerror:
        return cause.strerror
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _os_error(exc: BaseException, depth: int = 0) -> OSError | None:
    if depth > 8:
        return None
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc
    for inner in (*exc.args, exc.__cause__, exc.__context__):
        if isinstance(inner, BaseException):
            found = _os_error(inner, depth + 1)
            if found is not None:
                return found
    return None


# What refusal() tells apart.
MISSING = "missing"  # no such container or volume
IMAGE_MISSING = "image_missing"
CONFLICT = "conflict"  # in use, being removed, or not running
BIND_SOURCE_MISSING = "bind_source_missing"  # a host path to mount is not on the engine's host
NETWORK_MISSING = "network_missing"
OTHER = "other"


def refusal(exc: Exception) -> str:
    """Which of the refusals above a docker-py ``APIError`` is."""
    import docker

    if isinstance(exc, docker.errors.ImageNotFound):
        return IMAGE_MISSING
    explanation = str(getattr(exc, "explanation", None) or exc)
    # The engine answers these with a generic status: its words are all there is.
    if "bind source path does not exist" in explanation:
        return BIND_SOURCE_MISSING
    if "network" in explanation and "not found" in explanation:
        return NETWORK_MISSING
    if isinstance(exc, docker.errors.NotFound):
        return MISSING
    if getattr(exc, "status_code", None) == 409 or "is not running" in explanation:
        return CONFLICT
    return OTHER
