"""The one place that turns SandboxConfig into a sandbox container's run arguments.

Every isolation option lives here so it can be read (and unit-tested) at once.
The behaviour each option promises is tested from inside a real container.
"""

from typing import Any

from omcp_py.config import SandboxConfig
from omcp_py.runner import INIT_SOURCE

SANDBOX_USER = "1000:1000"
WORKDIR = "/sandbox"
HOME = "/home/sandbox"


def _tmpfs(size: int, mode: str, owned: bool) -> str:
    # nosuid/nodev: nothing on a tmpfs can gain privileges or open a device.
    options = f"rw,nosuid,nodev,size={size},mode={mode}"
    return options + (",uid=1000,gid=1000" if owned else "")


def sandbox_run_kwargs(config: SandboxConfig, labels: dict[str, str]) -> dict[str, Any]:
    """Keyword arguments for ``client.containers.create`` that make one hardened sandbox.

    Args:
        config: the server's settings (image, limits, tmpfs sizes).
        labels: the ownership labels the container carries.

    Returns:
        A dict for ``client.containers.create(**kwargs)``.
    """
    return {
        "image": config.docker_image,
        # Our own PID 1 (not docker's tini): it reaps zombies and, being the
        # namespace's init, cannot be killed by the sandbox's code, so cleaning up
        # an execution with kill(-1) never stops the sandbox.
        "command": ["python3", "-I", "-c", INIT_SOURCE],
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
        },
        # No network at all: the container gets its own namespace with loopback only
        # (and is created about twice as fast as with network_mode="none").
        "network_disabled": True,
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "mem_limit": config.sandbox_memory,
        "memswap_limit": config.sandbox_memory,
        "nano_cpus": int(config.sandbox_cpus * 1e9),
        "pids_limit": config.sandbox_pids_limit,
        "shm_size": config.sandbox_shm_size,
        "tmpfs": {
            "/tmp": _tmpfs(config.sandbox_tmp_size, "1777", owned=False),
            WORKDIR: _tmpfs(config.sandbox_workdir_size, "0700", owned=True),
            HOME: _tmpfs(config.sandbox_home_size, "0700", owned=True),
        },
        # What the code prints never lands in the engine's log files on the host.
        "log_config": {"type": "none", "config": {}},
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
