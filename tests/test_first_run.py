"""A new user's first run: `omcp_py doctor`, finding the engine, a Claude-Desktop-style
launch, and an image that is not there yet (pulled with progress, or a clear error)."""

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import docker
import pytest
from conftest import (
    ENGINE_SOCKET,
    ROOT,
    TOOLS,
    ca_bundle,
    needs,
    serve_and_use,
    start_server,
    tls_index,
)
from engines import free_port
from mcp.client.stdio import StdioServerParameters

from omcp_py.docker_host import candidates, current_context

BIN = Path(sys.executable).parent
# What Claude Desktop passes to a server it starts (on Linux and macOS): no DOCKER_HOST,
# no virtual environment, a short PATH, and `/` as the working directory.
BARE_PATH = "/usr/bin:/bin"


# Settings the suite itself runs under (SANDBOX_RUNTIME=runsc for its gVisor leg), and
# the CA bundle this machine trusts (its TLS-intercepting proxy), as a user here would
# set it: doctor checks the installer's reach to the index, and passes them all on to
# the client's config.
SUITE_SETTINGS = {name: os.environ[name] for name in ("SANDBOX_RUNTIME",) if name in os.environ}
if ca_bundle() is not None:
    SUITE_SETTINGS["PACKAGE_CA_BUNDLE"] = str(ca_bundle())


def doctor(env: dict[str, str] | None = None, cwd: Path | None = None):
    proc = subprocess.run(
        [str(BIN / "omcp_py"), "doctor"],
        env={**os.environ, **SUITE_SETTINGS, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return proc


def client_json(output: str, header: str) -> dict:
    """The JSON block doctor prints after the line starting with ``header``."""
    at = output.index("\n" + header)
    start = output.index("\n{\n", at) + 1
    return json.JSONDecoder().raw_decode(output[start:])[0]


def claude_config(output: str) -> dict:
    """Claude Desktop's entry, as a user would copy it."""
    return client_json(output, "Claude Desktop:")["mcpServers"]["omcp_py"]


def claude_code_line(output: str) -> list[str]:
    """The `claude mcp add` line doctor prints, split as a shell would."""
    lines = output.splitlines()
    return shlex.split(lines[lines.index("Claude Code: run") + 1])


def _bare_env(extra: dict[str, str]) -> dict[str, str]:
    home = os.environ.get("HOME", "/root")
    env = {"HOME": home, "PATH": BARE_PATH, "USER": "root", "LOGNAME": "root", "SHELL": "/bin/sh"}
    env.update(extra)
    return env


async def test_doctor_passes_and_its_config_starts_the_server(docker_client) -> None:
    proc = doctor(cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Warnings of known escapes depend on this machine's engine (Debian 12's runc
    # 1.1.5 gets one): they are not checks, and never fail doctor.
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    checks = [line for line in lines if not line.startswith("[warn]")]
    # A CA bundle (this machine's proxy) adds the check of it on the engine's host.
    expected = 7 + ("PACKAGE_CA_BUNDLE" in SUITE_SETTINGS)
    assert len(checks) == expected and all(line.startswith("[ok  ]") for line in checks), lines
    assert "the installer reaches the package index https://pypi.org/simple/" in proc.stdout
    assert "ran print(1) and was removed" in proc.stdout
    entry = claude_config(proc.stdout)
    assert Path(entry["command"]).is_absolute() and Path(entry["command"]).exists()
    # The other clients get the same command, arguments and environment.
    env = entry.get("env", {})
    line = claude_code_line(proc.stdout)
    head = ["claude", "mcp", "add", "omcp_py", "--scope", "user", "--transport", "stdio"]
    assert line[:8] == head
    dash = line.index("--")
    assert line[dash + 1 :] == [entry["command"], *entry["args"]]
    assert all(line[i] == "--env" for i in range(8, dash, 2))
    pairs = [line[i + 1] for i in range(8, dash, 2)]
    assert dict(pair.split("=", 1) for pair in pairs) == env
    vscode = client_json(proc.stdout, "VS Code:")["servers"]["omcp_py"]
    assert vscode == {"type": "stdio", "command": entry["command"], "args": entry["args"]} | (
        {"env": env} if env else {}
    )
    cursor = client_json(proc.stdout, "Cursor:")["mcpServers"]["omcp_py"]
    assert cursor == entry
    # Exactly what a user pastes, started as Claude Desktop starts it.
    params = StdioServerParameters(
        command=entry["command"],
        args=entry["args"],
        env=_bare_env(entry.get("env", {})),
        cwd="/",
    )
    assert await serve_and_use(params) == TOOLS


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("unix:///nonexistent/docker.sock", "no engine socket at that path"),
        ("tcp://127.0.0.1:1", "connection refused"),
    ],
)
def test_doctor_with_a_bogus_docker_host(host: str, reason: str) -> None:
    proc = doctor({"DOCKER_HOST": host})
    assert proc.returncode == 1, proc.stdout
    lines = proc.stdout.splitlines()
    failed = next(i for i, line in enumerate(lines) if line.startswith("[FAIL]"))
    assert lines[failed] == f"[FAIL] Docker engine at {host} (DOCKER_HOST): {reason}"
    assert "unset it" in lines[failed + 1] and lines[failed + 1].lstrip().startswith("fix:")
    # What needs the engine is skipped, not reported as passing.
    skipped = 4 + ("PACKAGE_CA_BUNDLE" in SUITE_SETTINGS)
    assert sum(line.startswith("[skip]") for line in lines) == skipped
    assert "1 check(s) failed" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_doctor_names_a_missing_image_and_how_to_get_it(docker_client) -> None:
    proc = doctor({"DOCKER_IMAGE": "omcp-test/not-here:1"})
    assert proc.returncode == 1
    assert "[FAIL] DOCKER_IMAGE omcp-test/not-here:1 is not on the engine" in proc.stdout
    assert "docker pull omcp-test/not-here:1" in proc.stdout
    assert "omcp_py image build" in proc.stdout
    assert "[skip] a real sandbox" in proc.stdout
    # The setting is passed on to the client, which does not read our .env.
    expected = {"DOCKER_IMAGE": "omcp-test/not-here:1"} | SUITE_SETTINGS
    assert claude_config(proc.stdout)["env"] == expected


def test_doctor_says_a_failing_sandbox_step_as_a_line(docker_client, tmp_path) -> None:
    # An unknown runtime: a FAIL line with the runtimes offered, the sandbox skipped.
    proc = doctor({"SANDBOX_RUNTIME": "kata"})
    assert proc.returncode == 1, proc.stdout
    assert "[FAIL] SANDBOX_RUNTIME=kata" in proc.stdout
    assert "is not a runtime of this engine; it offers" in proc.stdout
    assert "[skip] a real sandbox (needs the limits and the runtime)" in proc.stdout
    assert "1 check(s) failed" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "ExceptionGroup" not in proc.stdout + proc.stderr
    # An image without python3: the sandbox step itself fails, as one line with its fix.
    (tmp_path / "hello").write_text("hi")
    archive = tmp_path / "image.tar"
    subprocess.run(["tar", "-C", str(tmp_path), "-cf", str(archive), "hello"], check=True)
    image = "omcp-test/no-python:1"
    with archive.open("rb") as data:
        docker_client.api.import_image_from_data(data.read(), repository=image)
    try:
        proc = doctor({"DOCKER_IMAGE": image})
    finally:
        docker_client.images.remove(image, force=True)
    assert proc.returncode == 1, proc.stdout
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("[FAIL] a hardened")]
    assert line.startswith("[FAIL] a hardened sandbox: The sandbox container did not start")
    assert "python3" in line
    assert "Traceback" not in proc.stdout + proc.stderr


def test_doctor_names_package_ca_bundle_when_the_index_certificate_fails(
    tmp_path: Path, docker_client
) -> None:
    # A local HTTPS index with a certificate of its own, as behind an intercepting proxy.
    with tls_index(tmp_path, docker_client) as (url, cert):
        refused = doctor({"PACKAGE_INDEX_URL": url, "PACKAGE_CA_BUNDLE": ""})
        trusted = doctor({"PACKAGE_INDEX_URL": url, "PACKAGE_CA_BUNDLE": str(cert)})
    assert refused.returncode == 1, refused.stdout
    assert f"[FAIL] the installer cannot verify the certificate of {url}" in refused.stdout
    assert "set PACKAGE_CA_BUNDLE to the CA bundle this machine trusts" in refused.stdout
    assert trusted.returncode == 0, trusted.stdout
    assert f"[ok  ] the installer reaches the package index {url}" in trusted.stdout


def test_doctor_reports_invalid_settings() -> None:
    proc = doctor({"SANDBOX_MEMORY": "lots"})
    assert proc.returncode == 1
    assert "invalid setting SANDBOX_MEMORY='lots'" in proc.stdout
    assert "[skip] Docker engine" in proc.stdout


def _colima_home(tmp_path: Path) -> tuple[Path, str]:
    """A HOME whose current docker context is Colima's, its socket leading to the real
    engine (as `colima start` leaves a Mac: no /var/run/docker.sock, no DOCKER_HOST)."""
    sock = tmp_path / ".colima/default/docker.sock"
    sock.parent.mkdir(parents=True)
    sock.symlink_to(ENGINE_SOCKET)
    url = f"unix://{sock}"
    import hashlib

    meta = tmp_path / ".docker/contexts/meta" / hashlib.sha256(b"colima").hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(
        json.dumps({"Name": "colima", "Endpoints": {"docker": {"Host": url}}})
    )
    (tmp_path / ".docker/config.json").write_text(json.dumps({"currentContext": "colima"}))
    return tmp_path, url


def test_engine_candidates_in_order(tmp_path: Path) -> None:
    home, url = _colima_home(tmp_path)
    assert current_context({}, home).url == url
    found = candidates(env={}, home=home)
    assert [c.source for c in found[:3]] == [
        "docker context 'colima'",
        "the default socket",
        "Docker Desktop (macOS)",
    ]
    assert {"OrbStack", "Colima", "rootless Docker", "Podman"} <= {c.source for c in found}
    # A setting names the engine: nothing is guessed.
    assert candidates(env={"DOCKER_HOST": "tcp://h:2375"}, home=home)[0].source == "DOCKER_HOST"
    assert candidates("unix:///x.sock", env={"DOCKER_HOST": "tcp://h:2375"})[0].url == (
        "unix:///x.sock"
    )
    # DOCKER_CONTEXT wins over config.json; "default" means the default socket.
    assert current_context({"DOCKER_CONTEXT": "default"}, home) is None


async def test_the_engine_of_the_docker_context_is_found(tmp_path: Path, docker_client) -> None:
    home, url = _colima_home(tmp_path)
    env = {"HOME": str(home)}
    if "DOCKER_HOST" in os.environ:
        pytest.skip("the test run names its engine with DOCKER_HOST")
    proc = doctor(env)
    assert proc.returncode == 0, proc.stdout
    assert f"answers at {url} (docker context 'colima')" in proc.stdout
    assert claude_config(proc.stdout)["env"] == {"DOCKER_HOST": url} | SUITE_SETTINGS
    # The server finds it too, with no DOCKER_HOST.
    async with start_server({"HOME": str(home)}, cwd=tmp_path) as srv:
        sandbox = await srv.create()
        assert (await srv.run(sandbox, "print(2)"))["output"] == "2\n"


def test_cli_help_and_version() -> None:
    version = subprocess.run(
        [str(BIN / "omcp_py"), "--version"], capture_output=True, text=True, timeout=30
    )
    assert version.returncode == 0 and version.stdout.strip().startswith("omcp_py 0.")
    helped = subprocess.run(
        [str(BIN / "omcp_py"), "--help"], capture_output=True, text=True, timeout=30
    )
    assert helped.returncode == 0
    for command in ("serve", "doctor", "image"):
        assert command in helped.stdout
    wrong = subprocess.run(
        [str(BIN / "omcp_py"), "doctr"], capture_output=True, text=True, timeout=30
    )
    assert wrong.returncode == 2 and "invalid choice: 'doctr'" in wrong.stderr


# -- an image that is not on the engine yet -------------------------------------------


@pytest.fixture
def registry_image(tmp_path: Path, docker_client: docker.DockerClient):
    """An image that lives only in a local registry (no registry is reachable here):
    the base image plus a 48 MB layer of its own, so the pull has something to fetch."""
    registry = needs("docker-registry", "apt install docker-registry (the CI script does)")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        [registry, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    image = f"127.0.0.1:{port}/omcp-pull-test:1"
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the registry did not start"
            time.sleep(0.1)
        context = tmp_path / "image"
        context.mkdir()
        (context / "Dockerfile").write_text(
            "FROM python:3.11-slim\nRUN head -c 48000000 /dev/urandom > /var/tmp/blob\n"
        )
        docker_client.images.build(path=str(context), tag=image, rm=True)
        for event in docker_client.api.push(image, stream=True, decode=True):
            assert "error" not in event, event
        docker_client.images.remove(image)
        yield image
    finally:
        with __import__("contextlib").suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(image, force=True)
        proc.terminate()
        proc.wait(10)


async def test_first_create_pulls_the_image_with_progress(
    registry_image: str, tmp_path: Path, docker_client
) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def heard(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    env = {"DOCKER_IMAGE": registry_image, "SANDBOX_POOL_SIZE": "0"}
    async with start_server(env, cwd=tmp_path) as srv:
        with anyio.fail_after(10):  # answers at once though the image is missing
            assert {t.name for t in (await srv.session.list_tools()).tools} == TOOLS
        result = await srv.session.call_tool("create_sandbox", {}, progress_callback=heard)
        assert not result.is_error, result.content
        sandbox = result.structured_content["sandbox_id"]
        assert (await srv.run(sandbox, "print(3)"))["output"] == "3\n"
        first_pull = list(progress)
        # Someone removes the image while the server runs: the server, which knew it
        # was there, finds it missing at the next create and fetches it again.
        docker_client.images.remove(registry_image, force=True)
        progress.clear()
        again = await srv.session.call_tool("create_sandbox", {}, progress_callback=heard)
        assert not again.is_error, again.content
        assert progress and progress[-1][2].startswith(f"pulled Docker image {registry_image}")
        progress[:] = first_pull
    assert docker_client.images.get(registry_image)
    assert len(progress) >= 2, progress
    values = [done for done, _, _ in progress]
    assert values == sorted(values) and len(set(values)) == len(values), values
    assert all(registry_image in (message or "") for _, _, message in progress)
    assert progress[0][2].startswith(f"pulling Docker image {registry_image}")
    assert progress[-1][2].startswith(f"pulled Docker image {registry_image} in ")
    assert any(" MB downloaded" in (m or "") for _, _, m in progress)


def test_uvx_is_what_doctor_recommends_under_uvx(tmp_path: Path) -> None:
    """Run from uvx's cache, doctor names uvx (by absolute path), not the throwaway
    environment's script."""
    uvx = shutil.which("uvx")
    if uvx is None:
        pytest.fail("uvx is needed: pip install uv")
    proc = subprocess.run(
        [uvx, "--from", str(ROOT), "omcp_py", "doctor"],
        env={**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    entry = claude_config(proc.stdout)
    assert Path(entry["command"]).name == "uvx" and Path(entry["command"]).is_absolute()
    assert entry["args"] == ["omcp_py"]
