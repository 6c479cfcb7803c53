"""The run arguments of a sandbox, read in one place (behaviour is tested in-container)."""

import pytest

from omcp_py.config import SandboxConfig
from omcp_py.hardening import (
    PACKAGES_DIR,
    installer_run_kwargs,
    memory_guard,
    missing_limits,
    runtime_problem,
    sandbox_run_kwargs,
    volume_owner_kwargs,
)


@pytest.fixture(autouse=True)
def default_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite's second pass sets SANDBOX_RUNTIME=runsc for the servers it starts;
    # these tests build their settings themselves.
    monkeypatch.delenv("SANDBOX_RUNTIME", raising=False)


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
    # PID 1 keeps four capabilities to run the code as user 1000 with none.
    assert kwargs["user"] == "0:0"
    assert sorted(kwargs["cap_add"]) == ["KILL", "SETGID", "SETPCAP", "SETUID"]
    # The zygote's modules by default (an image without them gets no zygote).
    assert kwargs["command"][4:] == ["1000:1000", "/sandbox", "0", "numpy,pandas,matplotlib.pyplot"]
    assert "runtime" not in kwargs
    assert kwargs["mem_limit"] == kwargs["memswap_limit"] == 256 * 2**20
    assert kwargs["nano_cpus"] == 500_000_000
    assert kwargs["pids_limit"] == 128
    assert set(kwargs["tmpfs"]) == {"/tmp", "/sandbox", "/home/sandbox"}
    assert "size=33554432" in kwargs["tmpfs"]["/tmp"]
    for opts in kwargs["tmpfs"].values():
        assert {"noexec", "nosuid", "nodev"} <= set(opts.split(",")), opts
    assert kwargs["labels"] == {"omcp_py.owner": "me"}
    assert kwargs["command"][:3] == ["python3", "-I", "-c"]
    [mount] = kwargs["mounts"]
    assert (mount["Target"], mount["Source"], mount["ReadOnly"]) == (PACKAGES_DIR, "vol", True)


def test_installer_is_hardened_like_a_sandbox_but_networked() -> None:
    config = SandboxConfig(package_ca_bundle="/etc/ssl/certs/ca-certificates.crt")
    kwargs = installer_run_kwargs(
        config, {"omcp_py.role": "installer"}, "vol", ["--", "six"], network="omcp-egress-x"
    )
    sandbox = sandbox_run_kwargs(config, {}, "vol")
    for key in ("read_only", "cap_drop", "security_opt", "mem_limit", "pids_limit"):
        assert kwargs[key] == sandbox[key], key
    assert kwargs["user"] == "1000:1000" and "cap_add" not in kwargs
    # On the egress filter's internal network, with a name server that answers nothing.
    assert kwargs["network_mode"] == "omcp-egress-x" and "network_disabled" not in kwargs
    assert kwargs["dns"] == ["192.0.2.1"]
    assert kwargs["command"][-2:] == ["--", "six"]
    mounts = {m["Target"]: m for m in kwargs["mounts"]}
    assert mounts["/etc/omcp/ca-bundle.crt"]["ReadOnly"] is True
    assert kwargs["environment"]["PIP_CERT"] == "/etc/omcp/ca-bundle.crt"


def test_installer_with_a_wheelhouse_has_no_network() -> None:
    config = SandboxConfig(package_wheelhouse="/srv/wheels")
    kwargs = installer_run_kwargs(config, {}, "vol", ["--", "six"], network=None)
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


def test_gvisor_gets_room_for_its_kernel_and_limits_the_code_inside() -> None:
    config = SandboxConfig(sandbox_runtime="runsc", sandbox_memory="512m", package_ca_bundle=None)
    kwargs = sandbox_run_kwargs(config, {}, "vol")
    assert kwargs["runtime"] == "runsc"
    # The container holds gVisor's kernel too; the code's limits are applied inside.
    assert kwargs["mem_limit"] == kwargs["memswap_limit"] == (512 + 128) * 2**20
    assert kwargs["pids_limit"] == 128 * 8 + 128
    assert kwargs["command"][-2] == "128"  # RLIMIT_NPROC of the code's user
    assert memory_guard(config) == 512 * 2**20 and memory_guard(SandboxConfig()) == 0
    # A networked installer stays on the default runtime, with the plain limits.
    installer = installer_run_kwargs(config, {}, "vol", ["--", "six"], network="n")
    assert "runtime" not in installer and installer["pids_limit"] == 128
    helper = volume_owner_kwargs(config, {}, "vol")
    assert helper["runtime"] == "runsc" and helper["network_disabled"] is True


def test_an_unknown_runtime_names_the_ones_the_engine_offers() -> None:
    info = {"Runtimes": {"runc": {}, "runsc": {}}, "DefaultRuntime": "runc"}
    assert runtime_problem(info, None) is None and runtime_problem(info, "runsc") is None
    message = runtime_problem(info, "kata")
    assert message is not None
    assert "SANDBOX_RUNTIME='kata'" in message and "runc, runsc" in message
