"""The run arguments of a sandbox, read in one place (behaviour is tested in-container)."""

from omcp_py.config import SandboxConfig
from omcp_py.hardening import (
    PACKAGES_DIR,
    installer_run_kwargs,
    missing_limits,
    sandbox_run_kwargs,
    volume_owner_kwargs,
)


def test_every_isolation_option_is_set() -> None:
    config = SandboxConfig(
        sandbox_memory="256m",
        sandbox_tmp_size="32m",
        sandbox_shm_size="16m",
        sandbox_workdir_size="32m",
        sandbox_home_size="8m",
    )
    kwargs = sandbox_run_kwargs(config, {"omcp_py.owner": "me"}, "vol")
    assert kwargs["network_disabled"] is True
    assert kwargs["read_only"] is True
    assert kwargs["cap_drop"] == ["ALL"]
    assert kwargs["security_opt"] == ["no-new-privileges:true"]
    assert kwargs["user"] == "1000:1000"
    assert kwargs["mem_limit"] == kwargs["memswap_limit"] == 256 * 2**20
    assert kwargs["nano_cpus"] == 500_000_000
    assert kwargs["pids_limit"] == 128
    assert set(kwargs["tmpfs"]) == {"/tmp", "/sandbox", "/home/sandbox"}
    assert "size=33554432" in kwargs["tmpfs"]["/tmp"]
    assert all("nosuid" in opts and "nodev" in opts for opts in kwargs["tmpfs"].values())
    assert kwargs["labels"] == {"omcp_py.owner": "me"}
    assert kwargs["command"][:3] == ["python3", "-I", "-c"]
    [mount] = kwargs["mounts"]
    assert (mount["Target"], mount["Source"], mount["ReadOnly"]) == (PACKAGES_DIR, "vol", True)


def test_installer_is_hardened_like_a_sandbox_but_networked() -> None:
    config = SandboxConfig(package_ca_bundle="/etc/ssl/certs/ca-certificates.crt")
    kwargs = installer_run_kwargs(config, {"omcp_py.role": "installer"}, "vol", ["--", "six"])
    sandbox = sandbox_run_kwargs(config, {}, "vol")
    for key in ("read_only", "cap_drop", "security_opt", "user", "mem_limit", "pids_limit"):
        assert kwargs[key] == sandbox[key], key
    assert kwargs["network_mode"] == "bridge" and "network_disabled" not in kwargs
    assert kwargs["command"][-2:] == ["--", "six"]
    mounts = {m["Target"]: m for m in kwargs["mounts"]}
    assert mounts["/etc/omcp/ca-bundle.crt"]["ReadOnly"] is True
    assert kwargs["environment"]["PIP_CERT"] == "/etc/omcp/ca-bundle.crt"


def test_installer_with_a_wheelhouse_has_no_network() -> None:
    config = SandboxConfig(package_wheelhouse="/srv/wheels")
    kwargs = installer_run_kwargs(config, {}, "vol", ["--", "six"])
    assert kwargs["network_disabled"] is True and "network_mode" not in kwargs


def test_volume_helper_keeps_only_chown() -> None:
    kwargs = volume_owner_kwargs(SandboxConfig(), {}, "vol")
    assert kwargs["user"] == "0:0" and kwargs["cap_drop"] == ["ALL"]
    assert kwargs["cap_add"] == ["CHOWN"] and kwargs["network_disabled"] is True


def test_environment_is_fixed_not_inherited(monkeypatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "x")
    env = sandbox_run_kwargs(SandboxConfig(), {}, "vol")["environment"]
    assert set(env) == {
        "HOME",
        "TMPDIR",
        "LANG",
        "PYTHONDONTWRITEBYTECODE",
        "MPLBACKEND",
        "PYTHONUSERBASE",
    }
    assert "SECRET_TOKEN" not in env and env["HOME"] == "/home/sandbox"


def test_an_engine_that_would_drop_a_limit_is_refused() -> None:
    full = {"MemoryLimit": True, "SwapLimit": True, "PidsLimit": True, "CpuCfsQuota": True}
    assert missing_limits(full) == []
    assert missing_limits(full | {"SwapLimit": False, "PidsLimit": False}) == [
        "swap limit (memory + swap = SANDBOX_MEMORY)",
        "process limit (SANDBOX_PIDS_LIMIT)",
    ]
