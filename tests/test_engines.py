"""Sandboxes on an engine that is not the local one, reached as users reach theirs: a
second dockerd on loopback over TLS (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH),
the docker context that names it, and ``ssh://`` through an sshd. The core scenario
runs there while the local engine holds nothing of ours."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import ca_bundle, container_of, owned_by, start_server
from engines import SecondEngine, core_scenario, core_settings, second_dockerd, sshd, wheel_house

pytestmark = pytest.mark.any_runtime  # the second engine has only the default runtime


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory, sandbox_image: str) -> Iterator[SecondEngine]:
    with second_dockerd(tmp_path_factory.mktemp("engine2"), [sandbox_image]) as engine:
        yield engine


@pytest.fixture(scope="module")
def remote_client(remote: SecondEngine) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=remote.socket)
    yield client
    client.close()


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return wheel_house(tmp_path_factory.mktemp("house"))


async def test_core_scenario_over_tls(
    remote, remote_client, docker_client, sandbox_image, wheelhouse, tmp_path
) -> None:
    env = core_settings(sandbox_image, wheelhouse) | remote.tls_env()
    async with start_server(env, cwd=tmp_path) as server:
        await core_scenario(server, remote_client, "omcp-remote")
        owner = _owner(remote_client, server.marker)
        assert owned_by(docker_client, owner) == []
    assert owned_by(remote_client, owner) == []


def _owner(client: docker.DockerClient, marker: str) -> str:
    """The server's owner label, read from its warm pool container on that engine."""
    found = client.api.containers(all=True, filters={"label": "omcp_py.owner"})
    owners = {c["Labels"]["omcp_py.owner"] for c in found}
    assert len(owners) == 1, owners
    return owners.pop()


def _doctor(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    bare = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    return subprocess.run(
        [str(Path(sys.executable).parent / "omcp_py"), "doctor"],
        env=bare | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_docker_context_names_the_engine_and_doctor_says_how(
    remote, sandbox_image, wheelhouse, tmp_path
) -> None:
    config = tmp_path / "docker-config"
    certs = remote.certs
    endpoint = (
        f"host={remote.tcp},ca={certs / 'ca.pem'},cert={certs / 'cert.pem'},key={certs / 'key.pem'}"
    )
    made = subprocess.run(
        [
            "docker",
            "--config",
            str(config),
            "context",
            "create",
            "omcp-remote",
            "--docker",
            endpoint,
        ],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    env = {
        "DOCKER_CONFIG": str(config),
        "DOCKER_CONTEXT": "omcp-remote",
        "DOCKER_IMAGE": sandbox_image,
        "PACKAGE_WHEELHOUSE": str(wheelhouse),
    }
    proc = _doctor(env, tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert f"answers at {remote.tcp} (docker context 'omcp-remote'), over TCP with TLS" in out, out
    assert "the engine's certificate verified" in out
    assert f"PACKAGE_WHEELHOUSE={wheelhouse} (1 wheels) readable on the engine's host" in out, out
    assert "a hardened sandbox started, ran print(1)" in out, out
    # The client's config names the context (its certificates come with it).
    assert '"DOCKER_CONTEXT": "omcp-remote"' in out and '"DOCKER_HOST"' not in out, out
    # A path the engine's host does not have is said to be missing there, with the fix.
    proc = _doctor(env | {"PACKAGE_WHEELHOUSE": "/srv/omcp-no-such-wheelhouse"}, tmp_path)
    assert proc.returncode == 1, proc.stdout
    assert "FAIL" in proc.stdout and "/srv/omcp-no-such-wheelhouse" in proc.stdout, proc.stdout
    assert "on the engine's host" in proc.stdout and "paths on the machine that runs" in proc.stdout


async def test_core_scenario_over_ssh(
    remote, remote_client, docker_client, sandbox_image, wheelhouse, tmp_path
) -> None:
    with sshd(tmp_path / "ssh", remote.socket) as daemon:
        env = core_settings(sandbox_image, wheelhouse) | {
            "DOCKER_HOST": daemon.url,
            "PATH": f"{daemon.bin}:{os.environ['PATH']}",
        }
        async with start_server(env, cwd=tmp_path) as server:
            await core_scenario(server, remote_client, "omcp-remote")
            owner = _owner(remote_client, server.marker)
            assert owned_by(docker_client, owner) == []
        assert owned_by(remote_client, owner) == []
        # A key the engine's host does not accept: ssh's own words, and what to do.
        (tmp_path / "ssh" / "authorized_keys").write_text("")
        proc = _doctor({"DOCKER_HOST": daemon.url, "PATH": env["PATH"]}, tmp_path)
        assert proc.returncode == 1, proc.stdout
        failed = next(line for line in proc.stdout.splitlines() if line.startswith("[FAIL]"))
        assert failed.startswith(f"[FAIL] Docker engine at {daemon.url} (DOCKER_HOST): ssh: ")
        assert "Permission denied (publickey)" in failed, failed


async def test_an_install_from_the_index_on_the_remote_engine(
    remote, remote_client, sandbox_image, tmp_path
) -> None:
    """pip through the egress filter, both made on the remote engine, with the CA
    bundle the engine's host has (this machine's TLS-intercepting proxy)."""
    bundle = ca_bundle()
    env = remote.tls_env() | {"DOCKER_IMAGE": sandbox_image, "SANDBOX_POOL_SIZE": "0"}
    if bundle is not None:
        env["PACKAGE_CA_BUNDLE"] = str(bundle)
    proc = _doctor(env, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the installer reaches the package index https://pypi.org/simple/" in proc.stdout
    if bundle is not None:
        seen = f"PACKAGE_CA_BUNDLE={bundle} ("
        assert seen in proc.stdout and "certificates) readable on the engine's host" in proc.stdout
    async with start_server(env, cwd=tmp_path) as server:
        sandbox = await server.create()
        installed = await server.call("install_package", {"sandbox_id": sandbox, "package": "six"})
        assert installed["success"] is True, installed
        assert [name.split("==")[0].lower() for name in installed["installed"]] == ["six"]
        used = await server.run(sandbox, "import six; print(six.__file__.startswith('/opt/omcp'))")
        assert used["output"] == "True\n", used
        # The installer and its filter ran on the remote engine, not here.
        assert container_of(remote_client, sandbox).status == "running"
