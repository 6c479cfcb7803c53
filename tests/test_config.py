"""SandboxConfig: defaults, sources, validation, and the docs that describe it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from omcp_py.config import SandboxConfig, documented_settings, load_config
from omcp_py.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
ENV_NAMES = [name for name, _, _ in documented_settings()]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults() -> None:
    config = load_config()
    assert config.sandbox_timeout == 300
    assert config.max_sandboxes == 10
    assert config.docker_image == "python:3.11-slim"
    assert config.sandbox_base_url is None
    assert config.debug is False and config.log_level == "INFO"
    assert config.sandbox_memory == 512 * 2**20
    assert config.sandbox_cpus == 0.5
    assert config.execution_timeout == 30
    assert config.output_limit == 2**20 and config.max_code_size == 2**20


def test_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MAX_SANDBOXES=4\nSANDBOX_MEMORY=1g\nUNRELATED=1\n")
    monkeypatch.setenv("SANDBOX_TIMEOUT", "60")
    monkeypatch.setenv("DEBUG", "true")
    config = load_config()
    assert (config.max_sandboxes, config.sandbox_timeout) == (4, 60)
    assert config.sandbox_memory == 2**30
    assert config.effective_log_level == "DEBUG"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SANDBOX_TIMEOUT", "abc", "valid integer"),
        ("MAX_SANDBOXES", "0", "greater than or equal to 1"),
        ("LOG_LEVEL", "LOUD", "DEBUG"),
        ("SANDBOX_MEMORY", "lots", "size such as 512m"),
        ("SANDBOX_CPUS", "-1", "greater than 0"),
    ],
)
def test_invalid_values_name_variable_value_and_rule(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_config()
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert f"{name}={value!r}" in message and expected in message


def test_tmpfs_must_fit_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_MEMORY", "128m")
    with pytest.raises(ConfigError, match="at most half of SANDBOX_MEMORY=128m"):
        load_config()


def serve_once(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """The server started with this environment and stdin closed: it starts, then ends."""
    return subprocess.run(
        [sys.executable, "-m", "omcp_py"],
        env=env,
        cwd=cwd,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        text=True,
    )


def test_invalid_setting_stops_the_server_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "SANDBOX_TIMEOUT": "soon"}
    proc = serve_once(env, tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "SANDBOX_TIMEOUT='soon'" in proc.stderr


def test_sample_env_matches_the_model() -> None:
    lines = (ROOT / "sample.env").read_text().splitlines()
    found = {}
    for index, line in enumerate(lines):
        match = re.match(r"^#? ?([A-Z_]+)=(.*)$", line)
        if match:
            found[match.group(1)] = (match.group(2), lines[index - 1].lstrip("# "))
    expected = {n: ("" if d == "(unset)" else d, t) for n, d, t in documented_settings()}
    assert found == expected
    # Every documented default is itself a valid value.
    SandboxConfig(**{n.lower(): v for n, (v, _) in found.items() if v})


def test_empty_settings_are_said_at_start(tmp_path: Path) -> None:
    # Empty means "use the default"; the server says so rather than pass it silently.
    (tmp_path / ".env").write_text("SANDBOX_TIMEOUT=\nMAX_SANDBOXES=3\n")
    env = {"PATH": "/usr/bin:/bin", "DOCKER_IMAGE": "", "SANDBOX_POOL_SIZE": "0"}
    proc = serve_once(env, tmp_path)
    assert proc.stdout == "", proc.stdout
    assert "DOCKER_IMAGE is empty: using the default python:3.11-slim" in proc.stderr
    assert "SANDBOX_TIMEOUT is empty: using the default 300" in proc.stderr
    assert "MAX_SANDBOXES" not in proc.stderr and "SANDBOX_POOL_SIZE" not in proc.stderr
