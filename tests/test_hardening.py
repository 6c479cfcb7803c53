"""The run arguments of a sandbox, read in one place (behaviour is tested in-container)."""

from omcp_py.config import SandboxConfig
from omcp_py.hardening import missing_limits, sandbox_run_kwargs


def test_every_isolation_option_is_set() -> None:
    config = SandboxConfig(
        sandbox_memory="256m",
        sandbox_tmp_size="32m",
        sandbox_shm_size="16m",
        sandbox_workdir_size="32m",
        sandbox_home_size="8m",
    )
    kwargs = sandbox_run_kwargs(config, {"omcp_py.owner": "me"})
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


def test_environment_is_fixed_not_inherited(monkeypatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "x")
    env = sandbox_run_kwargs(SandboxConfig(), {})["environment"]
    assert set(env) == {"HOME", "TMPDIR", "LANG", "PYTHONDONTWRITEBYTECODE", "MPLBACKEND"}
    assert "SECRET_TOKEN" not in env and env["HOME"] == "/home/sandbox"


def test_an_engine_that_would_drop_a_limit_is_refused() -> None:
    full = {"MemoryLimit": True, "SwapLimit": True, "PidsLimit": True, "CpuCfsQuota": True}
    assert missing_limits(full) == []
    assert missing_limits(full | {"SwapLimit": False, "PidsLimit": False}) == [
        "swap limit (memory + swap = SANDBOX_MEMORY)",
        "process limit (SANDBOX_PIDS_LIMIT)",
    ]
