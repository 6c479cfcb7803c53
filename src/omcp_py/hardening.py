"""The one place that turns SandboxConfig into a sandbox container's run arguments.

Every isolation option lives here so it can be read (and unit-tested) at once.
The behaviour each option promises is tested from inside a real container.
"""

import math
from typing import Any

from omcp_py.config import SandboxConfig, index_urls, uses_package_cache
from omcp_py.runner import source
from omcp_py.runner.assemble import program
from omcp_py.runner.pid1.protocol import CODE_GID, CODE_UID

SANDBOX_USER = f"{CODE_UID}:{CODE_GID}"
# PID 1 (the runner) runs as root with these capabilities only, so that the code can
# run as another user (SANDBOX_USER) that cannot signal, trace or read it: SETUID and
# SETGID to switch user in each forked child, SETPCAP to empty that child's capability
# bounding set first, KILL to end the code's processes after each run. Linux already
# shields a namespace's init from signals sent inside it; gVisor does not, and the
# separate user protects the runner there too. The code itself runs with no
# capability at all (and no-new-privileges: it can never regain one).
RUNNER_CAPABILITIES = ["SETPCAP", "SETUID", "SETGID", "KILL"]
WORKDIR = "/sandbox"
HOME = "/home/sandbox"
# The sandbox's package volume, a pip "user base": read-only inside the sandbox,
# written only by the installer. Not noexec, so compiled extensions load.
PACKAGES_DIR = "/opt/omcp/packages"
WHEELHOUSE_DIR = "/opt/omcp/wheelhouse"
CA_BUNDLE = "/etc/omcp/ca-bundle.crt"
_NO_NAME_SERVER = "192.0.2.1"  # TEST-NET-1 (RFC 5737): never routed
_INSTALL_TARGET = "/opt/omcp/target"
# The shared package cache: read-only in installers, written by the keeper alone.
CACHE_DIR = "/opt/omcp/cache"


def python_command(program: str, *args: str) -> list[str]:
    """The command that runs one of our programs with the image's python3."""
    # Whatever python3 the image has, isolated from its environment and working
    # directory (-I): our programs come on the command line, the image needs nothing.
    return ["python3", "-I", "-c", program, *args]


def packages_volume(sandbox_id: str) -> str:
    """Name of the volume that holds a sandbox's installed packages."""
    return f"omcp-{sandbox_id}-packages"


def _tmpfs(size: int, mode: str, owned: bool) -> str:
    # noexec/nosuid/nodev: nothing written at run time can be executed, gain
    # privileges or open a device. Docker adds these to --tmpfs mounts by default; other
    # engines (Podman) may not, so they are written out. Code that must load compiled
    # code installs it into the package volume, which is not noexec.
    options = f"rw,noexec,nosuid,nodev,size={size},mode={mode}"
    return options + (f",uid={CODE_UID},gid={CODE_GID}" if owned else "")


# Memory of gVisor's own kernel, given on top of SANDBOX_MEMORY (it used 45-70 MiB
# here, with one to a hundred processes of the code).
GVISOR_MEMORY_ROOM = 128 * 1024**2


def own_kernel(config: SandboxConfig) -> bool:
    """True when SANDBOX_RUNTIME gives each sandbox a kernel of its own (gVisor)."""
    runtime = (config.sandbox_runtime or "").lower()
    return "runsc" in runtime or "gvisor" in runtime


def _runtime(config: SandboxConfig) -> dict[str, Any]:
    return {"runtime": config.sandbox_runtime} if config.sandbox_runtime else {}


def _limits(config: SandboxConfig, runtime: bool = True) -> dict[str, Any]:
    pids, memory = config.sandbox_pids_limit, config.sandbox_memory
    if runtime and own_kernel(config):
        memory += GVISOR_MEMORY_ROOM
        # The host's count holds gVisor's kernel: its threads, and a few host processes
        # for every process of the code (about six each here: at 128, twenty sleeping
        # children ended the sandbox). The code's own limit is set inside it, as
        # RLIMIT_NPROC, by the runner.
        pids = pids * 8 + 128
    return {
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "mem_limit": memory,
        "memswap_limit": memory,
        "nano_cpus": int(config.sandbox_cpus * 1e9),
        "pids_limit": pids,
    }


def sandbox_run_kwargs(
    config: SandboxConfig,
    labels: dict[str, str],
    volume: str,
    *,
    network: str | None = None,
    proxy: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``client.containers.create`` that make one hardened sandbox.

    Args:
        config: the server's settings (image, limits, tmpfs sizes).
        labels: the ownership labels the container carries.
        volume: the sandbox's package volume; the engine creates it, with these labels.
        network: the sandbox's own internal network, when it was created with
            allow_hosts (None: no network at all, the default).
        proxy: the URL of that network's egress filter, given to the code as HTTP(S)_PROXY.

    Returns:
        A dict for ``client.containers.create(**kwargs)``.
    """
    from docker.types import Mount

    environment = {
        "HOME": HOME,
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLBACKEND": "Agg",
        # Installed packages live in this user base: the runner adds its site dir
        # (python -I would not), and any python the code starts adds it too.
        "PYTHONUSERBASE": PACKAGES_DIR,
    }
    # No network at all: the container gets its own namespace with loopback only
    # (and is created about twice as fast as with network_mode="none").
    networking: dict[str, Any] = {"network_disabled": True}
    if network is not None:
        # Its own internal network, whose only way out is its filter; no name server
        # answers (the filter resolves), so the code goes through the proxy or nowhere.
        networking = {"network_mode": network, "dns": [_NO_NAME_SERVER]}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            environment[name] = proxy or ""
    return {
        "image": config.docker_image,
        # PID 1 is our runner (not docker's tini): it reaps zombies, runs every
        # execution as a fork of itself that becomes SANDBOX_USER in WORKDIR, and it
        # cannot be killed by the sandbox's code (another user, and the namespace's
        # init), so its kill(-1) after a run never stops the sandbox. The host reaches
        # it on the container's stdin/stdout (attach).
        "command": python_command(
            program(),
            SANDBOX_USER,
            WORKDIR,
            str(config.sandbox_pids_limit if own_kernel(config) else 0),
            ",".join(config.preload_modules),
        ),
        "stdin_open": True,
        # Without it docker-py sets StdinOnce (like `docker run -i`): the engine would
        # close PID 1's stdin for good the first time an attach connection ends (a
        # network blip to a remote engine, a proxy going away), and no request would
        # reach the runner again.
        "detach": True,
        "labels": labels,
        "hostname": "sandbox",
        "user": "0:0",
        # The runner's own directory: root without DAC_OVERRIDE cannot enter WORKDIR.
        "working_dir": "/",
        # An explicit environment: nothing of the server's own leaks in.
        "environment": environment,
        **networking,
        **_limits(config),
        "cap_add": RUNNER_CAPABILITIES,
        **_runtime(config),
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
        "command": python_command(
            f"import os; os.chmod({_INSTALL_TARGET!r}, 0o755); "
            f"os.chown({_INSTALL_TARGET!r}, {CODE_UID}, {CODE_GID})"
        ),
        "labels": labels,
        "user": "0:0",
        "network_disabled": True,
        **_limits(config),
        **_runtime(config),
        "cap_add": ["CHOWN"],
        "mounts": [Mount(_INSTALL_TARGET, volume, type="volume", no_copy=True)],
        "log_config": {"type": "json-file", "config": {"max-size": "64k"}},
    }


def installer_run_kwargs(
    config: SandboxConfig,
    labels: dict[str, str],
    volume: str,
    pip_args: list[str],
    *,
    network: str | None,
) -> dict[str, Any]:
    """Run arguments of an installer container: pip writing into a sandbox's volume.

    Hardened like a sandbox (non-root, no capabilities, read-only root, the same
    limits) but on ``network``, the internal network whose only way out is the egress
    filter (None: no network, with a wheelhouse). Runs only pip and our installer
    script: never the user's code, though pip runs package code while it builds.

    Args:
        config: the server's settings.
        labels: ownership labels (with the installer role).
        volume: the sandbox's package volume, mounted read-write here.
        pip_args: from :func:`omcp_py.packages.pip_arguments`.
        network: the internal network of the egress filter, or None.

    Returns:
        A dict for ``client.containers.create(**kwargs)``.
    """
    from docker.types import Mount

    mounts = [Mount(_INSTALL_TARGET, volume, type="volume", no_copy=True)]
    cache = ""
    if uses_package_cache(config):
        mounts.append(_cache_mount(config, read_only=True))
        cache = CACHE_DIR
    command = python_command(
        source("sandbox_install.py"),
        _INSTALL_TARGET,
        str(config.packages_disk_limit),
        cache,
        str(math.ceil(config.installer_cpus)),
        source("pip_driver.py"),
        *pip_args,
    )
    return _installer(config, labels, command, mounts, network=network)


def _cache_mount(config: SandboxConfig, *, read_only: bool) -> Any:
    from docker.types import Mount

    return Mount(CACHE_DIR, config.package_cache_volume, type="volume", read_only=read_only)


def cache_keeper_kwargs(
    config: SandboxConfig,
    labels: dict[str, str],
    volume: str,
    *,
    network: str,
    proxy: str,
    used: list[str],
) -> dict[str, Any]:
    """Run arguments of the package cache's keeper after an install into ``volume``:
    the installer's hardening and egress filter, the cache read-write, running only
    runner/cache_keeper.py (no pip, no package code). ``used``: entries installs took
    since the last keeper ran (their sha256)."""
    import json

    from docker.types import Mount

    from omcp_py.runner.sandbox_install import STAGE

    mounts = [
        Mount(_INSTALL_TARGET, volume, type="volume", no_copy=True),
        _cache_mount(config, read_only=False),
    ]
    command = python_command(
        source("cache_keeper.py"),
        CACHE_DIR,
        f"{_INSTALL_TARGET}/{STAGE}",
        str(config.package_cache_size),
        json.dumps(index_urls(config)),
        proxy,
        json.dumps(used),
    )
    return _installer(config, labels, command, mounts, network=network)


def cache_owner_kwargs(config: SandboxConfig, labels: dict[str, str]) -> dict[str, Any]:
    """Run arguments that give the cache volume to the keeper's user (as
    :func:`volume_owner_kwargs` does a package volume)."""
    return volume_owner_kwargs(config, labels, config.package_cache_volume)


def index_probe_kwargs(
    config: SandboxConfig, labels: dict[str, str], url: str, *, network: str, proxy: str
) -> dict[str, Any]:
    """Run arguments of a container that checks the installer's reach to ``url``:
    the installer's network, filter, hardening and CA bundle, running only a fetch of
    the index page (``omcp_py doctor``). It prints ``ok``, or ``tls``/``net`` and why."""
    command = python_command(_INDEX_PROBE, url, proxy)
    return _installer(config, labels, command, [], network=network)


def host_paths_probe_kwargs(config: SandboxConfig, labels: dict[str, str]) -> dict[str, Any]:
    """Run arguments of a container that looks at PACKAGE_CA_BUNDLE and
    PACKAGE_WHEELHOUSE where installers see them: bind mounts, so paths on the
    engine's host, not this one (``omcp_py doctor``). No network. It prints a line
    per path: ``ok <what>`` or ``bad <why>``."""
    command = python_command(
        _HOST_PATHS_PROBE,
        CA_BUNDLE if config.package_ca_bundle else "",
        WHEELHOUSE_DIR if config.package_wheelhouse else "",
    )
    kwargs = _installer(config, labels, command, [], network="none")
    kwargs.pop("dns", None)
    return kwargs


_HOST_PATHS_PROBE = """
import os, sys
bundle, house = sys.argv[1], sys.argv[2]
if bundle:
    try:
        with open(bundle, "rb") as f:
            count = f.read(64 * 1024 * 1024).count(b"BEGIN CERTIFICATE")
        print("ok %d certificates" % count if count else "bad holds no certificate")
    except OSError as exc:
        print("bad", exc.strerror)
if house:
    try:
        names = os.listdir(house)
        print("ok %d wheels" % sum(n.endswith(".whl") for n in names))
    except OSError as exc:
        print("bad", exc.strerror)
"""


# The egress filter holds no state and runs no package code: small fixed limits.
_FILTER_MEMORY = 96 * 1024**2
_FILTER_PIDS = 96  # a thread per connection, at most 48 of them


def egress_filter_kwargs(
    config: SandboxConfig, labels: dict[str, str], settings: str
) -> dict[str, Any]:
    """Run arguments of the egress filter: a sandbox's hardening, small limits, on
    INSTALLER_NETWORK (the caller connects it to the internal network too) and the
    engine's default runtime (it has a network)."""
    return {
        "image": config.docker_image,
        "command": python_command(source("egress_filter.py"), settings),
        "labels": labels,
        "hostname": "egress-filter",
        "user": SANDBOX_USER,
        "environment": {"LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"},
        "network": config.installer_network,
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "mem_limit": _FILTER_MEMORY,
        "memswap_limit": _FILTER_MEMORY,
        "nano_cpus": int(min(config.installer_cpus, 1.0) * 1e9),
        "pids_limit": _FILTER_PIDS,
        # Its log is a line per connection, read by the server: capped on disk.
        "log_config": {"type": "json-file", "config": {"max-size": "1m", "max-file": "1"}},
    }


# What `pip` would meet first: the index's TLS certificate and the network to it.
_INDEX_PROBE = """
import os, ssl, sys, urllib.error, urllib.request
url, proxy = sys.argv[1], sys.argv[2]
context = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or None)
opener = urllib.request.build_opener(
    urllib.request.ProxyHandler({"http": proxy, "https": proxy} if proxy else {}),
    urllib.request.HTTPSHandler(context=context),
)
try:
    opener.open(url, timeout=15).read(1)
    print("ok")
except urllib.error.HTTPError as exc:
    print("ok HTTP %d" % exc.code)
except Exception as exc:
    reason = getattr(exc, "reason", exc)
    kind = "tls" if isinstance(reason, ssl.SSLError) else "net"
    print(kind, str(reason)[:300])
"""


def _installer(
    config: SandboxConfig,
    labels: dict[str, str],
    command: list[str],
    mounts: list[Any],
    *,
    network: str | None,
) -> dict[str, Any]:
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
    mounts = list(mounts)
    if config.package_ca_bundle:
        mounts.append(Mount(CA_BUNDLE, config.package_ca_bundle, type="bind", read_only=True))
        environment |= {"PIP_CERT": CA_BUNDLE, "SSL_CERT_FILE": CA_BUNDLE}
        environment["REQUESTS_CA_BUNDLE"] = CA_BUNDLE
    # A networked installer stays on the engine's default runtime: gVisor as Debian
    # builds it runs only containers without a network. It runs pip, not the user's code.
    # Its network is internal: no route, and no name server that answers for the
    # world (an unroutable one: the engine's resolver would otherwise ask the host's
    # for it, a channel out). The filter is addressed by IP.
    networking: dict[str, Any] = {"network_mode": network, "dns": [_NO_NAME_SERVER]}
    if config.package_wheelhouse:
        mounts.append(Mount(WHEELHOUSE_DIR, config.package_wheelhouse, type="bind", read_only=True))
        networking = {"network_disabled": True, **_runtime(config)}
    elif network is None:
        raise ValueError("an installer without a wheelhouse needs the egress network")
    return {
        "image": config.docker_image,
        "command": command,
        "labels": labels,
        "hostname": "installer",
        "user": SANDBOX_USER,
        "working_dir": HOME,
        "environment": environment,
        **networking,
        **_limits(config, runtime=bool(config.package_wheelhouse)),
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


def memory_guard(config: SandboxConfig) -> int:
    """Memory use above which the runner kills a run itself; 0 when it need not.

    With runc the kernel's out-of-memory killer picks the code (the runner sets its
    oom_score_adj) and the sandbox lives on. gVisor's memory is its kernel's: when the
    container reaches its limit the host kills that kernel, and the whole sandbox ends.
    So under gVisor the container gets GVISOR_MEMORY_ROOM more than SANDBOX_MEMORY, and
    the runner stops the code when it uses more than SANDBOX_MEMORY.
    """
    return config.sandbox_memory if own_kernel(config) else 0


def runtime_problem(engine_info: dict[str, Any], runtime: str | None) -> str | None:
    """Why SANDBOX_RUNTIME cannot be used on this engine, or None when it can.

    Args:
        engine_info: the engine's ``docker info`` answer.
        runtime: the configured runtime (None: the engine's default).
    """
    offered = sorted(engine_info.get("Runtimes") or {})
    if runtime is None or runtime in offered:
        return None
    return (
        f"SANDBOX_RUNTIME={runtime!r} is not a runtime of this engine; it offers "
        f"{', '.join(offered) or 'none by name'} (default "
        f"{engine_info.get('DefaultRuntime', 'unknown')}). Set SANDBOX_RUNTIME to one of "
        f"them, or unset it; for gVisor install runsc and register it in the engine's "
        f"daemon.json."
    )


def missing_limits(engine_info: dict[str, Any]) -> list[str]:
    """The sandbox limits this engine would silently drop.

    Args:
        engine_info: the engine's ``docker info`` answer.

    Returns:
        A description of each limit it cannot enforce (empty when all hold).
    """
    return [what for flag, what in _ENFORCED_BY.items() if engine_info.get(flag) is False]
