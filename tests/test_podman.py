"""Podman's Docker-compatible API (rootful, `podman system service` on a unix socket):
the core scenario, and the isolation the security suite checks, seen from inside."""

import importlib.util
import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from conftest import IMAGE, Case, Held, Server, start_server
from engines import core_scenario, core_settings, podman_service, wheel_house

pytestmark = pytest.mark.any_runtime  # Podman runs its own runtime (runc here)


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory, sandbox_image: str) -> Iterator[str]:
    with podman_service(tmp_path_factory.mktemp("podman"), [sandbox_image, IMAGE]) as url:
        yield url


@pytest.fixture(scope="module")
def podman_client(podman: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=podman)
    yield client
    client.close()


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return wheel_house(tmp_path_factory.mktemp("house"))


async def test_core_scenario_on_podman(podman, podman_client, sandbox_image, wheelhouse, tmp_path):
    env = core_settings(sandbox_image, wheelhouse) | {"DOCKER_HOST": podman}
    async with start_server(env, cwd=tmp_path) as server:
        await core_scenario(server, podman_client, "omcp-remote")


# The security suite's checks of isolation, each seen from inside a sandbox, run here
# unchanged against a server on Podman: (module, test, arguments of its parametrize).
SECURITY = Path(__file__).parent / "security"
ISOLATION = [
    ("test_escape", "test_no_network_but_loopback", {}),
    ("test_escape", "test_root_filesystem_is_read_only", {}),
    ("test_escape", "test_nothing_written_at_run_time_can_be_executed", {}),
    ("test_escape", "test_unprivileged_user_without_capabilities", {}),
    ("test_escape", "test_setuid_and_mount_fail", {}),
    ("test_escape", "test_init_is_pid_1_and_reaps_orphans", {}),
    ("test_escape", "test_code_cannot_kill_the_runner", {}),
    ("test_escape", "test_raw_and_packet_sockets_are_refused", {}),
    ("test_escape", "test_namespaces_modules_and_kernel_settings_are_out_of_reach", {}),
    ("test_resources", "test_memory_limit_kills_the_hog_and_says_so", {}),
    ("test_resources", "test_tmpfs_fills_with_a_clear_error_not_an_oom", {}),
    ("test_resources", "test_fork_bomb_is_contained", {}),
    ("test_resources", "test_cpu_is_limited", {}),
    ("test_resources", "test_filling_the_working_directory_and_home", {"directory": "/sandbox"}),
    (
        "test_resources",
        "test_filling_the_working_directory_and_home",
        {"directory": "/home/sandbox"},
    ),
    ("test_resources", "test_ten_thousand_open_files", {}),
]


def _security_test(module: str, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"podman_{module}", SECURITY / f"{module}.py")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return getattr(loaded, name)


@pytest.fixture(scope="module")
async def podman_server(podman, tmp_path_factory) -> AsyncIterator[Server]:
    """The security suite's server (the default image, python:3.11-slim), on Podman."""
    env = {"DOCKER_HOST": podman}
    held = Held(start_server(env, cwd=tmp_path_factory.mktemp("podman-server")))
    yield await held.enter()
    await held.exit()


@pytest.mark.parametrize(
    ("module", "name", "params"),
    ISOLATION,
    ids=[
        f"{name.removeprefix('test_')}{''.join(f'[{v}]' for v in p.values())}"
        for _, name, p in ISOLATION
    ],
)
async def test_isolation_on_podman(podman_server, podman_client, module, name, params) -> None:
    check = _security_test(module, name)
    sandbox = await podman_server.create()
    given = {
        "server": podman_server,
        "sandbox": sandbox,
        "docker_client": podman_client,
        "case": Case(podman_server, sandbox, podman_client),
        **params,
    }
    try:
        await check(**{arg: given[arg] for arg in inspect.signature(check).parameters})
    finally:
        listed = await podman_server.call("list_sandboxes", {"include_inactive": True})
        for entry in listed["sandboxes"]:
            await podman_server.call("remove_sandbox", {"sandbox_id": entry["id"], "force": True})
