"""The one place that turns SandboxConfig into a sandbox container's run arguments.

Every isolation option lives here so it can be read (and unit-tested) at once.
The behaviour each option promises is tested from inside a real container.
"""

from typing import Any

from omcp_py.config import SandboxConfig
from omcp_py.runner import source

SANDBOX_USER = "1000:1000"
WORKDIR = "/sandbox"
HOME = "/home/sandbox"
# The sandbox's package volume, a pip "user base": read-only inside the sandbox,
# written only by the installer. Not noexec, so compiled extensions load.
PACKAGES_DIR = "/opt/omcp/packages"
WHEELHOUSE_DIR = "/opt/omcp/wheelhouse"
CA_BUNDLE = "/etc/omcp/ca-bundle.crt"
_INSTALL_TARGET = "/opt/omcp/target"


def _python(program: str, *args: str) -> list[str]:
    # Whatever python3 the image has, isolated from its environment and working
    # directory (-I): our programs come on the command line, the image needs nothing.
    return ["python3", "-I", "-c", program, *args]


def packages_volume(sandbox_id: str) -> str:
    """Name of the volume that holds a sandbox's installed packages."""
    return f"omcp-{sandbox_id}-packages"


def _tmpfs(size: int, mode: str, owned: bool) -> str:
    # nosuid/nodev: nothing on a tmpfs can gain privileges or open a device.
    options = f"rw,nosuid,nodev,size={size},mode={mode}"
    return options + (",uid=1000,gid=1000" if owned else "")


def _limits(config: SandboxConfig) -> dict[str, Any]:
    return {
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "mem_limit": config.sandbox_memory,
        "memswap_limit": config.sandbox_memory,
        "nano_cpus": int(config.sandbox_cpus * 1e9),
        "pids_limit": config.sandbox_pids_limit,
    }


def sandbox_run_kwargs(
    config: SandboxConfig, labels: dict[str, str], volume: str
) -> dict[str, Any]:
    """Keyword arguments for ``client.containers.create`` that make one hardened sandbox.

    Args:
        config: the server's settings (image, limits, tmpfs sizes).
        labels: the ownership labels the container carries.
        volume: the sandbox's package volume; the engine creates it, with these labels.

    Returns:
        A dict for ``client.containers.create(**kwargs)``.
    """
    from docker.types import Mount

    return {
        "image": config.docker_image,
        # PID 1 is our runner (not docker's tini): it reaps zombies, runs every
        # execution as a fork of itself, and being the namespace's init it cannot be
        # killed by the sandbox's code, so its kill(-1) after a run never stops the
        # sandbox. The host reaches it on the container's stdin/stdout (attach).
        "command": _python(source("sandbox_runner.py")),
        "stdin_open": True,
        "labels": labels,
        "hostname": "sandbox",
        "user": SANDBOX_USER,
        "working_dir": WORKDIR,
        # An explicit environment: nothing of the server's own leaks in.
        "environment": {
            "HOME": HOME,
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "MPLBACKEND": "Agg",
            # Installed packages live in this user base: the runner adds its site dir
            # (python -I would not), and any python the code starts adds it too.
            "PYTHONUSERBASE": PACKAGES_DIR,
        },
        # No network at all: the container gets its own namespace with loopback only
        # (and is created about twice as fast as with network_mode="none").
        "network_disabled": True,
        **_limits(config),
        "shm_size": config.sandbox_shm_size,
        "tmpfs": {
            "/tmp": _tmpfs(config.sandbox_tmp_size, "1777", owned=False),
            WORKDIR: _tmpfs(config.sandbox_workdir_size, "0700", owned=True),
            HOME: _tmpfs(config.sandbox_home_size, "0700", owned=True),
        },
        "mounts": [
            Mount(PACKAGES_DIR, volume, type="volume", read_only=True, no_copy=True, labels=labels)
        ],
        # What the code prints never lands in the engine's log files on the host.
        "log_config": {"type": "none", "config": {}},
    }


def volume_owner_kwargs(
    config: SandboxConfig, labels: dict[str, str], volume: str
) -> dict[str, Any]:
    """Run arguments of the one-shot helper that gives a new package volume to the
    sandbox user (the engine creates volumes owned by root).

    It is the only container we start as root: no network, read-only root, every
    capability dropped but CHOWN, running a fixed command.
    """
    from docker.types import Mount

    return {
        "image": config.docker_image,
        "command": _python(
            f"import os; os.chmod({_INSTALL_TARGET!r}, 0o755); "
            f"os.chown({_INSTALL_TARGET!r}, 1000, 1000)"
        ),
        "labels": labels,
        "user": "0:0",
        "network_disabled": True,
        **_limits(config),
        "cap_add": ["CHOWN"],
        "mounts": [Mount(_INSTALL_TARGET, volume, type="volume", no_copy=True)],
        "log_config": {"type": "json-file", "config": {"max-size": "64k"}},
    }


def installer_run_kwargs(
    config: SandboxConfig, labels: dict[str, str], volume: str, pip_args: list[str]
) -> dict[str, Any]:
    """Run arguments of an installer container: pip writing into a sandbox's volume.

    Hardened like a sandbox (non-root, no capabilities, read-only root, the same
    limits) but on INSTALLER_NETWORK, unless a wheelhouse makes the network needless.
    Runs only pip and our installer script: never the user's code.

    Args:
        config: the server's settings.
        labels: ownership labels (with the installer role).
        volume: the sandbox's package volume, mounted read-write here.
        pip_args: from :func:`omcp_py.packages.pip_arguments`.

    Returns:
        A dict for ``client.containers.create(**kwargs)``.
    """
    from docker.types import Mount

    environment = {
        "HOME": HOME,
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PIP_NO_CACHE_DIR": "1",
        # pip --user into the volume: pip sees what is installed there already.
        "PYTHONUSERBASE": _INSTALL_TARGET,
        # Images that mark their Python as externally managed (PEP 668) refuse --user;
        # the volume is no system's package set.
        "PIP_BREAK_SYSTEM_PACKAGES": "1",
    }
    mounts = [Mount(_INSTALL_TARGET, volume, type="volume", no_copy=True)]
    if config.package_ca_bundle:
        mounts.append(Mount(CA_BUNDLE, config.package_ca_bundle, type="bind", read_only=True))
        environment |= {"PIP_CERT": CA_BUNDLE, "SSL_CERT_FILE": CA_BUNDLE}
        environment["REQUESTS_CA_BUNDLE"] = CA_BUNDLE
    network: dict[str, Any] = {"network_mode": config.installer_network}
    if config.package_wheelhouse:
        mounts.append(Mount(WHEELHOUSE_DIR, config.package_wheelhouse, type="bind", read_only=True))
        network = {"network_disabled": True}
    return {
        "image": config.docker_image,
        "command": _python(source("sandbox_install.py"), _INSTALL_TARGET, *pip_args),
        "labels": labels,
        "hostname": "installer",
        "user": SANDBOX_USER,
        "working_dir": HOME,
        "environment": environment,
        **network,
        **_limits(config),
        # Byte-compiling a large package is CPU-bound: at the sandbox's share it is
        # most of an install's time.
        "nano_cpus": int(config.installer_cpus * 1e9),
        "tmpfs": {
            "/tmp": _tmpfs(config.sandbox_tmp_size, "1777", owned=False),
            HOME: _tmpfs(config.sandbox_home_size, "0700", owned=True),
        },
        "mounts": mounts,
        # The installer script caps what it prints; the log goes with the container.
        "log_config": {"type": "json-file", "config": {"max-size": "1m"}},
    }


# Limits we set and the `docker info` flag that says the engine enforces them. An
# engine without one drops that limit with a mere warning; we refuse instead.
_ENFORCED_BY = {
    "MemoryLimit": "memory limit (SANDBOX_MEMORY)",
    "SwapLimit": "swap limit (memory + swap = SANDBOX_MEMORY)",
    "PidsLimit": "process limit (SANDBOX_PIDS_LIMIT)",
    "CpuCfsQuota": "CPU limit (SANDBOX_CPUS)",
}


def missing_limits(engine_info: dict[str, Any]) -> list[str]:
    """The sandbox limits this engine would silently drop.

    Args:
        engine_info: the engine's ``docker info`` answer.

    Returns:
        A description of each limit it cannot enforce (empty when all hold).
    """
    return [what for flag, what in _ENFORCED_BY.items() if engine_info.get(flag) is False]
