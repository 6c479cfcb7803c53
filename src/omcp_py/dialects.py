"""What differs between engines that speak the Docker API: the run arguments a
sandbox is made with, adapted to the engine that makes it, and what the engine
reports it applied, compared with what was asked (pure code: no Docker here).

Podman (its Docker-compatible service) differs from Docker in four ways that touch
the hardening, each seen from inside a container on Podman 4.3:

* it ignores ``NetworkDisabled``: such a container gets a bridge, a route out and a
  name server. It is asked for ``network_mode="none"`` instead;
* it refuses tmpfs ``uid=``/``gid=`` options: a directory the code owns (0700) is made
  ``mode=1777`` instead; only the code's own user runs in a sandbox;
* it copies the image's directory at a tmpfs's path into it (``tmpcopyup``), with
  that directory's owner and mode: ``notmpcopyup`` keeps the mode asked for;
* it gives read-only containers writable, executable, unbounded tmpfs mounts on
  ``/run`` and ``/var/tmp`` (its ``--read-only-tmpfs``): they are mounted read-only
  here instead, so the only writable places are ours, small and noexec.
"""

from typing import Any

DOCKER = "docker"
PODMAN = "podman"

# Podman's --read-only-tmpfs mounts; on Docker these stay read-only directories.
_PODMAN_WRITABLE = ("/run", "/var/tmp")
_READ_ONLY_TMPFS = "ro,noexec,nosuid,nodev,size=65536,mode=0755,notmpcopyup"


def kind_of(version: dict[str, Any]) -> str:
    """The engine's kind from its ``/version`` answer (Podman names itself there)."""
    components = version.get("Components") or []
    names = [str(c.get("Name", "")) for c in components if isinstance(c, dict)]
    return PODMAN if any(name.startswith("Podman") for name in names) else DOCKER


def adapt(kwargs: dict[str, Any], kind: str) -> dict[str, Any]:
    """``kwargs`` for ``containers.create`` as ``kind`` must be given them."""
    if kind != PODMAN:
        return kwargs
    adapted = dict(kwargs)
    if adapted.pop("network_disabled", False):
        adapted["network_mode"] = "none"
    tmpfs = {path: _podman_tmpfs(options) for path, options in (kwargs.get("tmpfs") or {}).items()}
    if kwargs.get("read_only"):
        for path in _PODMAN_WRITABLE:
            tmpfs.setdefault(path, _READ_ONLY_TMPFS)
    if tmpfs:
        adapted["tmpfs"] = tmpfs
    return adapted


def _podman_tmpfs(options: str) -> str:
    parts = options.split(",")
    owned = any(part.startswith(("uid=", "gid=")) for part in parts)
    parts = [p for p in parts if not p.startswith(("uid=", "gid=", "tmpcopyup"))]
    if owned:
        parts = [p for p in parts if not p.startswith("mode=")] + ["mode=1777"]
    return ",".join([*parts, "notmpcopyup"])


# What the engine reports in HostConfig for each limit asked: (argument, field).
_LIMITS = (
    ("mem_limit", "Memory"),
    ("memswap_limit", "MemorySwap"),
    ("nano_cpus", "NanoCpus"),
    ("pids_limit", "PidsLimit"),
)


def dropped(kwargs: dict[str, Any], attrs: dict[str, Any], kind: str) -> list[str]:
    """The hardening asked for in ``kwargs`` that the engine's inspect answer
    (``attrs``: its Config and HostConfig) does not show applied; empty when all is."""
    host_config = attrs.get("HostConfig") or {}
    missing = [
        f"{field}={kwargs[name]} (it shows {host_config.get(field)!r})"
        for name, field in _LIMITS
        if kwargs.get(name) and host_config.get(field) != kwargs[name]
    ]
    if (kwargs.get("network_disabled") or kwargs.get("network_mode") == "none") and not (
        (attrs.get("Config") or {}).get("NetworkDisabled")
        or host_config.get("NetworkMode") == "none"
    ):
        missing.append(
            f"network isolation (its network mode is {host_config.get('NetworkMode')!r})"
        )
    if kwargs.get("read_only") and not host_config.get("ReadonlyRootfs"):
        missing.append("a read-only root filesystem")
    dropped_caps = {str(c).upper().removeprefix("CAP_") for c in host_config.get("CapDrop") or []}
    # Podman lists, instead of ALL, each capability it would otherwise have granted.
    added = {str(c).upper().removeprefix("CAP_") for c in host_config.get("CapAdd") or []}
    asked = {str(c).upper().removeprefix("CAP_") for c in kwargs.get("cap_add") or []}
    all_dropped = "ALL" in dropped_caps or (
        kind == PODMAN and bool(dropped_caps) and added <= asked
    )
    if "ALL" in (kwargs.get("cap_drop") or []) and not all_dropped:
        missing.append("dropping all capabilities")
    options = " ".join(host_config.get("SecurityOpt") or [])
    if "no-new-privileges" in " ".join(kwargs.get("security_opt") or []) and (
        "no-new-privileges" not in options
    ):
        missing.append("no-new-privileges")
    return missing
