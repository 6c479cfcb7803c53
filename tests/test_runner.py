"""The in-sandbox runner and the warm pool, through the MCP client against the engine:
fresh state by default, state kept when asked, recovery when the interpreter dies,
timeouts, and a pool that counts against MAX_SANDBOXES."""

from pathlib import Path

import anyio
import docker
import pytest
from conftest import (
    Server,
    container_of,
    eventually,
    processes_in,
    readable_dir,
    start_server,
    zip_wheel,
)


def _leftovers(container) -> list[str]:
    """Processes other than PID 1, the warm child and a stateful interpreter."""
    return [
        p for p in processes_in(container) if not p.startswith("1 ") and "(omcp-state)" not in p
    ]


async def test_each_run_starts_fresh_by_default(server: Server, sandbox: str) -> None:
    first = await server.run(sandbox, "import json\nx = 41\nprint('set')")
    assert first["output"] == "set\n" and first["state"] is None
    second = await server.run(sandbox, "print(x)")
    assert second["success"] is False and "NameError" in second["error"]
    third = await server.run(sandbox, "print('json' in dir())")
    assert third["output"] == "False\n"
    # Files are the sandbox's, not the interpreter's: they stay.
    await server.run(sandbox, "open('kept.txt', 'w').write('on disk')")
    assert (await server.run(sandbox, "print(open('kept.txt').read())"))["output"] == "on disk\n"


async def test_a_stateful_sandbox_keeps_variables_imports_and_data(server: Server) -> None:
    created = await server.call("create_sandbox", {"stateful": True})
    assert created["stateful"] is True
    sid = created["sandbox_id"]
    first = await server.run(sid, "import math\ndata = [i * i for i in range(10)]\nx = 41")
    assert first["success"] is True and first["state"] == "fresh"
    second = await server.run(sid, "x += 1\nprint(x, math.isqrt(sum(data)))")
    assert second["output"] == "42 16\n" and second["state"] == "kept"
    # An exception is a result; the state survives it.
    failing = await server.run(sid, "y = 1\nraise ValueError('boom')")
    assert failing["success"] is False and "ValueError: boom" in failing["error"]
    assert failing["state"] == "kept"
    # sys.exit ends the run, not the interpreter.
    exited = await server.run(sid, "import sys\nsys.exit(3)")
    assert exited["exit_code"] == 3 and exited["state"] == "kept"
    assert (await server.run(sid, "print(x, y)"))["output"] == "42 1\n"
    listed = await server.call("list_sandboxes")
    assert listed["count"] == 1


async def test_a_dead_interpreter_is_reported_and_replaced(server: Server, docker_client) -> None:
    sid = await server.create(stateful=True)
    await server.run(sid, "x = 1")
    died = await server.run(sid, "import os\nprint('bye', flush=True)\nos._exit(7)")
    assert died["output"] == "bye\n" and died["exit_code"] == 7
    assert died["state"] == "lost" and "its state is lost" in died["error"]
    after = await server.run(sid, "print('x' in dir())")
    assert after["output"] == "False\n" and after["state"] == "fresh"
    assert "previous interpreter" in after["error"] and "exited with code 7" in after["error"]
    # Out of memory: the kernel kills the interpreter (never PID 1); the next run is fresh.
    await server.run(sid, "y = 2")
    hog = await server.run(sid, "blocks = []\nwhile True:\n    blocks.append(bytearray(2**24))")
    assert hog["state"] == "lost" and hog["exit_code"] == 137, hog
    fresh = await server.run(sid, "print('y' in dir())")
    assert fresh["output"] == "False\n" and fresh["state"] == "fresh"
    container = container_of(docker_client, sid)
    assert await eventually(lambda: _leftovers(container) == [], 5), _leftovers(container)


async def test_timeouts_through_the_runner_end_the_state_too(server: Server, docker_client) -> None:
    sid = await server.create(stateful=True)
    await server.run(sid, "kept = 'before'")
    # A child of the code that ignores SIGTERM, a setsid daemon, and a CPU loop.
    result = await server.run(
        sid,
        "import subprocess, signal\n"
        "subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
        "subprocess.Popen(['python3', '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
        "print('started', flush=True)\n"
        "while True:\n"
        "    pass\n",
        timeout=2,
    )
    assert result["timed_out"] is True and result["output"] == "started\n"
    assert result["state"] == "lost"
    container = container_of(docker_client, sid)
    assert await eventually(lambda: _leftovers(container) == [], 5), _leftovers(container)
    after = await server.run(sid, "print('kept' in dir())")
    assert after["output"] == "False\n" and after["state"] == "fresh"


async def test_what_a_stateful_run_starts_ends_with_the_run(server: Server, docker_client) -> None:
    sid = await server.create(stateful=True)
    result = await server.run(
        sid,
        "import subprocess, threading, time\n"
        "subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
        "ticks = []\n"
        "threading.Thread(target=lambda: [ticks.append(1) or time.sleep(0.05) "
        "for _ in range(10**6)], daemon=True).start()\n",
    )
    assert result["success"] is True
    container = container_of(docker_client, sid)
    # The daemon process is gone; the interpreter (with its thread) stays.
    assert await eventually(lambda: _leftovers(container) == [], 5), _leftovers(container)
    await anyio.sleep(0.3)
    grown = await server.run(sid, "print(len(ticks) > 3)")
    assert grown["output"] == "True\n" and grown["state"] == "kept"


async def test_reset_drops_the_state_and_keeps_the_files(server: Server, sandbox: str) -> None:
    sid = await server.create(stateful=True)
    await server.run(sid, "x = 1\nopen('notes.txt', 'w').write('kept')")
    reset = await server.call("reset_sandbox_state", {"sandbox_id": sid})
    assert reset["success"] is True and "fresh state" in reset["message"]
    after = await server.run(sid, "print('x' in dir(), open('notes.txt').read())")
    assert after["output"] == "False kept\n" and after["state"] == "fresh"
    message = await server.error("reset_sandbox_state", {"sandbox_id": sandbox})
    assert "is stateless" in message and "stateful=true" in message


async def test_packages_installed_later_import_in_a_running_interpreter(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    house = readable_dir(tmp_path / "wheels")
    name, data = zip_wheel("omcp_late", "1.0", {"omcp_late.py": "HELLO = 'late'\n"})
    (house / name).write_bytes(data)
    (house / name).chmod(0o644)
    async with start_server({"PACKAGE_WHEELHOUSE": str(house)}, cwd=tmp_path) as server:
        stateful = await server.create(stateful=True)
        stateless = await server.create()
        for sid in (stateful, stateless):
            missing = await server.run(sid, "import omcp_late")
            assert "ModuleNotFoundError" in missing["error"]
            installed = await server.call(
                "install_package", {"sandbox_id": sid, "package": "omcp-late"}
            )
            assert installed["success"] is True, installed
            found = await server.run(sid, "import omcp_late; print(omcp_late.HELLO)")
            assert found["output"] == "late\n", found
        assert (await server.run(stateful, "print('missing' in dir())"))["state"] == "kept"


@pytest.mark.any_runtime
async def test_the_pool_counts_against_max_sandboxes(tmp_path: Path, docker_client) -> None:
    env = {"MAX_SANDBOXES": "3", "SANDBOX_POOL_SIZE": "2", "REAPER_INTERVAL": "1"}
    async with start_server(env, cwd=tmp_path) as server:
        labels = [f"omcp_py.owner-pid={server.pid}", "omcp_py.role=sandbox"]

        def ours() -> list:
            # This server's sandbox containers, the pool's included (low-level list:
            # no inspect per container, so one being removed meanwhile is no error).
            return docker_client.api.containers(all=True, filters={"label": labels})

        # Ready before anyone asks: two warm sandboxes, counted in the three allowed.
        assert await eventually(lambda: len(ours()) == 2, 30)
        seen = []
        ids = []
        for _ in range(3):
            ids.append(await server.create())
            seen.append(len(ours()))
        assert max(seen) <= 3, seen
        message = await server.error("create_sandbox", {})
        assert "Maximum number of sandboxes reached (3)" in message
        assert len(ours()) == 3
        for sid in ids:
            assert (await server.run(sid, "print('ok')"))["output"] == "ok\n"
        # A slot freed is a slot for the pool again.
        await server.call("remove_sandbox", {"sandbox_id": ids[0], "force": True})
        assert await eventually(lambda: len(ours()) == 3, 30)
        listed = await server.call("list_sandboxes")
        assert listed["count"] == 2  # pool sandboxes are not listed: nobody has them yet
        assert (await server.create()) not in ids


@pytest.mark.any_runtime
async def test_a_hanging_engine_never_delays_initialize(tmp_path: Path) -> None:
    # An engine that accepts connections and never answers: the pool cannot fill.
    import socket

    path = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    env = {"DOCKER_HOST": f"unix://{path}", "DOCKER_TIMEOUT": "2", "SANDBOX_POOL_SIZE": "2"}
    try:
        # A guard against a hang, not a timing: the pool fills in the background.
        with anyio.fail_after(60):
            async with start_server(env, cwd=tmp_path) as server:
                tools = (await server.session.list_tools()).tools
                assert "create_sandbox" in {t.name for t in tools}
                message = await server.error("create_sandbox")
                assert "did not answer within DOCKER_TIMEOUT" in message
    finally:
        listener.close()
