"""Run arguments adapted to the engine, and what an engine reports it applied."""

from omcp_py.config import SandboxConfig
from omcp_py.dialects import DOCKER, PODMAN, adapt, dropped, kind_of
from omcp_py.hardening import sandbox_run_kwargs

PODMAN_VERSION = {"ApiVersion": "1.41", "Components": [{"Name": "Podman Engine"}]}
DOCKER_VERSION = {"ApiVersion": "1.41", "Components": [{"Name": "Engine"}, {"Name": "containerd"}]}


def _sandbox() -> dict:
    return sandbox_run_kwargs(SandboxConfig(), {"omcp_py.owner": "x"}, "vol")


def test_the_kind_is_read_from_the_version_answer() -> None:
    assert kind_of(PODMAN_VERSION) == PODMAN
    assert kind_of(DOCKER_VERSION) == DOCKER
    assert kind_of({"Components": None}) == DOCKER and kind_of({}) == DOCKER


def test_docker_gets_the_arguments_unchanged() -> None:
    kwargs = _sandbox()
    assert adapt(kwargs, DOCKER) is kwargs


def test_podman_gets_no_network_by_mode_and_tmpfs_it_honours() -> None:
    kwargs = _sandbox()
    podman = adapt(kwargs, PODMAN)
    assert "network_disabled" not in podman and podman["network_mode"] == "none"
    for path, options in podman["tmpfs"].items():
        parts = options.split(",")
        assert "notmpcopyup" in parts and "noexec" in parts, (path, options)
        assert not any(p.startswith(("uid=", "gid=")) for p in parts), (path, options)
    # Owned by the code's user on Docker (uid=, 0700); open to it on Podman.
    assert "mode=1777" in podman["tmpfs"]["/sandbox"].split(",")
    # Podman's own writable /run and /var/tmp are covered read-only.
    for path in ("/run", "/var/tmp"):
        assert podman["tmpfs"][path].startswith("ro,noexec,nosuid,nodev,")
    assert kwargs["tmpfs"].keys() == {"/tmp", "/sandbox", "/home/sandbox"}  # not changed


def _reported(kwargs: dict, **changes) -> dict:
    host = {
        "Memory": kwargs["mem_limit"],
        "MemorySwap": kwargs["memswap_limit"],
        "NanoCpus": kwargs["nano_cpus"],
        "PidsLimit": kwargs["pids_limit"],
        "ReadonlyRootfs": True,
        "CapDrop": ["ALL"],
        "CapAdd": kwargs.get("cap_add"),
        "SecurityOpt": ["no-new-privileges:true"],
        "NetworkMode": "default",
    }
    return {"Config": {"NetworkDisabled": True}, "HostConfig": host | changes}


def test_what_the_engine_applied_passes() -> None:
    kwargs = _sandbox()
    assert dropped(kwargs, _reported(kwargs), DOCKER) == []
    # Podman lists each capability it would have granted, not ALL.
    podman = adapt(kwargs, PODMAN)
    listed = _reported(podman, CapDrop=["CHOWN", "KILL", "SETUID"], NetworkMode="none")
    listed["Config"] = {}
    assert dropped(podman, listed, PODMAN) == []


def test_each_dropped_part_of_the_hardening_is_named() -> None:
    kwargs = _sandbox()
    # What Podman does with NetworkDisabled: a bridge.
    bridged = _reported(kwargs, NetworkMode="bridge")
    bridged["Config"] = {}
    assert dropped(kwargs, bridged, PODMAN) == ["network isolation (its network mode is 'bridge')"]
    assert dropped(kwargs, _reported(kwargs, Memory=0), DOCKER)[0].startswith("Memory=")
    assert dropped(kwargs, _reported(kwargs, PidsLimit=None), DOCKER)[0].startswith("PidsLimit=")
    assert dropped(kwargs, _reported(kwargs, ReadonlyRootfs=False), DOCKER) == [
        "a read-only root filesystem"
    ]
    assert dropped(kwargs, _reported(kwargs, CapDrop=[]), DOCKER) == ["dropping all capabilities"]
    extra = _reported(kwargs, CapDrop=["CHOWN"], CapAdd=["SYS_ADMIN"])
    assert dropped(kwargs, extra, PODMAN) == ["dropping all capabilities"]
    assert dropped(kwargs, _reported(kwargs, SecurityOpt=[]), DOCKER) == ["no-new-privileges"]
