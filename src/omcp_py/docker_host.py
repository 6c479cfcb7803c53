"""Where the Docker engine is: the places the server and ``omcp_py doctor`` look.

The docker SDK only knows DOCKER_HOST and /var/run/docker.sock. Docker Desktop,
Colima, OrbStack, Podman and rootless Docker put their socket elsewhere, and an MCP
client such as Claude Desktop starts the server without the shell's DOCKER_HOST: so
when neither setting names an engine, the current docker context and the usual
socket paths are tried, in that order, and the first socket that exists is used.
"""

import hashlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = (
    "npipe:////./pipe/docker_engine" if sys.platform == "win32" else ("unix:///var/run/docker.sock")
)


@dataclass(frozen=True)
class EngineCandidate:
    """One place an engine may listen, and why it is looked at."""

    url: str
    source: str
    # A docker context's TLS material: the directory with ca.pem, cert.pem, key.pem.
    tls_dir: Path | None = None
    tls_verify: bool = True

    @property
    def socket_path(self) -> Path | None:
        """The socket file of a unix:// address (None for tcp://, ssh://, npipe://)."""
        if self.url.startswith("unix://"):
            return Path(self.url.removeprefix("unix://"))
        return None

    def present(self) -> bool:
        """False only for a unix socket that does not exist; other kinds are tried."""
        path = self.socket_path
        return path is None or path.exists()


def _docker_config_dir(env: Mapping[str, str], home: Path) -> Path:
    return Path(env.get("DOCKER_CONFIG") or home / ".docker")


def current_context(env: Mapping[str, str], home: Path) -> EngineCandidate | None:
    """The engine of the docker CLI's current context, unless it is ``default``.

    The CLI keeps contexts in ``~/.docker/contexts/meta/<sha256 of the name>/meta.json``;
    Colima, OrbStack and Docker Desktop register one and make it current.
    """
    config_dir = _docker_config_dir(env, home)
    name = env.get("DOCKER_CONTEXT")
    if not name:
        try:
            name = json.loads((config_dir / "config.json").read_text()).get("currentContext")
        except (OSError, ValueError, AttributeError):
            return None
    if not name or name == "default":
        return None
    digest = hashlib.sha256(name.encode()).hexdigest()
    try:
        meta = json.loads((config_dir / "contexts" / "meta" / digest / "meta.json").read_text())
        endpoint = meta["Endpoints"]["docker"]
        host = endpoint["Host"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not host:
        return None
    # `docker context create --docker host=tcp://…,ca=…,cert=…,key=…` copies the files here.
    tls = config_dir / "contexts" / "tls" / digest / "docker"
    return EngineCandidate(
        str(host),
        f"docker context {name!r}",
        tls_dir=tls if tls.is_dir() else None,
        tls_verify=not endpoint.get("SkipTLSVerify", False),
    )


def _usual_sockets(env: Mapping[str, str], home: Path) -> list[EngineCandidate]:
    runtime_dir = env.get("XDG_RUNTIME_DIR") or (
        f"/run/user/{os.getuid()}" if hasattr(os, "getuid") else ""
    )
    places = [
        (home / ".docker/run/docker.sock", "Docker Desktop (macOS)"),
        (home / ".docker/desktop/docker.sock", "Docker Desktop (Linux)"),
        (home / ".colima/default/docker.sock", "Colima"),
        (home / ".colima/docker.sock", "Colima"),
        (home / ".orbstack/run/docker.sock", "OrbStack"),
        (home / ".rd/docker.sock", "Rancher Desktop"),
    ]
    if runtime_dir:
        places += [
            (Path(runtime_dir) / "docker.sock", "rootless Docker"),
            (Path(runtime_dir) / "podman/podman.sock", "Podman (rootless)"),
        ]
    places.append((Path("/run/podman/podman.sock"), "Podman"))
    return [EngineCandidate(f"unix://{path}", source) for path, source in places]


def candidates(
    base_url: str | None = None,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> list[EngineCandidate]:
    """Every place looked at, in order: the settings first, then discovery.

    Args:
        base_url: SANDBOX_BASE_URL, if set.
        env: the environment (default: this process's).
        home: the home directory (default: the user's).

    Returns:
        The candidates; when a setting names the engine, that setting alone.
    """
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    if base_url:
        return [EngineCandidate(base_url, "SANDBOX_BASE_URL")]
    if env.get("DOCKER_HOST"):
        return [EngineCandidate(env["DOCKER_HOST"], "DOCKER_HOST")]
    found = []
    context = current_context(env, home)
    if context is not None:
        found.append(context)
    found.append(EngineCandidate(DEFAULT_URL, "the default socket"))
    if sys.platform != "win32":
        found += _usual_sockets(env, home)
    seen: set[str] = set()
    return [c for c in found if not (c.url in seen or seen.add(c.url))]


def locate(
    base_url: str | None = None,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> EngineCandidate:
    """The engine to use: a setting if one names it, else the first socket that exists.

    Args:
        base_url: SANDBOX_BASE_URL, if set.
        env: the environment (default: this process's).
        home: the home directory (default: the user's).

    Returns:
        The chosen place; the default socket when nothing else is found (the error
        then names it).
    """
    found = candidates(base_url, env, home)
    for candidate in found:
        if candidate.present():
            return candidate
    return next((c for c in found if c.url == DEFAULT_URL), found[0])


def transport(where: EngineCandidate, env: Mapping[str, str] | None = None) -> str:
    """How the server reaches ``where``, in words, for ``omcp_py doctor``."""
    env = os.environ if env is None else env
    scheme = where.url.partition("://")[0]
    if scheme == "unix":
        return "over its unix socket"
    if scheme == "npipe":
        return "over its named pipe"
    if scheme == "ssh":
        return "over ssh (the ssh client, with your ssh configuration and keys)"
    if where.source in ("DOCKER_HOST", "SANDBOX_BASE_URL"):
        certs = env.get("DOCKER_CERT_PATH") or "~/.docker"
        tls = bool(env.get("DOCKER_TLS_VERIFY") or env.get("DOCKER_CERT_PATH"))
        verified = bool(env.get("DOCKER_TLS_VERIFY"))
    else:
        certs, tls, verified = str(where.tls_dir), where.tls_dir is not None, where.tls_verify
    if not tls:
        return "over TCP without TLS: whoever reaches that port controls the engine"
    check = "the engine's certificate verified" if verified else "the engine NOT verified"
    return f"over TCP with TLS (client certificate from {certs}; {check})"
