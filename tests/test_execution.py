"""Executions never hang, never flood, never block one another."""

from pathlib import Path

import anyio
import pytest
from conftest import Server, container_of, eventually, processes_in

pytestmark = pytest.mark.anyio

STUBBORN = """
import signal, subprocess, sys
IGNORE = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
PARENT = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', %r]); " % IGNORE + IGNORE
subprocess.Popen([sys.executable, "-c", PARENT])  # a child and a grandchild ignoring SIGTERM
subprocess.Popen([sys.executable, "-c", IGNORE], start_new_session=True)  # a setsid daemon
print("started", flush=True)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    pass
"""


def _user_processes(container) -> list[str]:
    # Everything but PID 1 (the sandbox's init).
    return [p for p in processes_in(container) if not p.startswith("1 ")]


async def test_timeout_kills_the_whole_tree(server: Server, sandbox: str, docker_client) -> None:
    result = await server.run(sandbox, STUBBORN, timeout=3)
    assert result["timed_out"] is True and result["success"] is False
    assert result["output"] == "started\n"  # the partial output is kept
    assert "timed out after 3 s" in result["error"]
    assert result["duration_ms"] >= 3000
    container = container_of(docker_client, sandbox)
    assert await eventually(lambda: _user_processes(container) == [], 5), _user_processes(container)
    assert (await server.run(sandbox, "print('next')"))["output"] == "next\n"


async def test_sleep_in_c_code_and_loops_that_fork_are_killed(server: Server, sandbox: str) -> None:
    sleeper = await server.run(sandbox, "import time; time.sleep(600)", timeout=2)
    assert sleeper["timed_out"] is True
    forker = await server.run(
        sandbox,
        "import os, time\n"
        "while True:\n"
        "    if os.fork() == 0:\n"
        "        continue\n"  # the child carries the loop on
        "    os._exit(0)\n",
        timeout=2,
    )
    assert forker["timed_out"] is True or forker["exit_code"] == 0
    assert (await server.run(sandbox, "print(1)"))["output"] == "1\n"


async def test_background_processes_end_with_the_run(
    server: Server, sandbox: str, docker_client
) -> None:
    result = await server.run(
        sandbox,
        "import subprocess\n"
        "subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
        "subprocess.Popen(['sleep', '600'])\n"
        "print('returned')",
    )
    assert result["output"] == "returned\n" and result["timed_out"] is False
    container = container_of(docker_client, sandbox)
    assert await eventually(lambda: _user_processes(container) == [], 5), _user_processes(container)


async def test_code_cannot_kill_the_runner(server: Server, sandbox: str, docker_client) -> None:
    # The runner is PID 1, runs as another user (root, four capabilities) and is the
    # namespace's init: no signal, trace or /proc read from the code reaches it.
    result = await server.run(
        sandbox,
        "import ctypes, os, subprocess, signal\n"
        "subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
        "print(os.getppid())\n"
        "for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGSTOP):\n"
        "    try:\n"
        "        os.kill(os.getppid(), sig); print('sent', sig)\n"
        "    except PermissionError:\n"
        "        pass\n"
        "PTRACE_ATTACH = 16\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('ptrace', libc.ptrace(PTRACE_ATTACH, 1, 0, 0), ctypes.get_errno())\n"
        "for name in ('environ', 'mem', 'fd/0'):\n"
        "    try:\n"
        "        open('/proc/1/' + name, 'rb').read(1); print('read', name)\n"
        "    except OSError:\n"
        "        pass\n"
        "os.kill(-1, signal.SIGKILL)\n"  # all it may signal (on Linux, not itself)
        "print('survived')\n",
        timeout=5,
    )
    # environ may be readable under gVisor (it holds only the sandbox's fixed
    # environment: see test_environment_holds_nothing_of_the_server); nothing else is.
    assert result["output"].replace("read environ\n", "") == "1\nptrace -1 1\nsurvived\n", result
    assert result["success"] is True
    container = container_of(docker_client, sandbox)
    assert await eventually(lambda: _user_processes(container) == [], 5), _user_processes(container)
    assert (await server.run(sandbox, "print('ok')"))["output"] == "ok\n"


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_a_100_mb_flood_is_truncated(server: Server, sandbox: str) -> None:
    result = await server.run(
        sandbox,
        "import sys\n"
        "sys.stdout.write('A' * 1000 + 'x' * 100_000_000 + 'Z' * 1000)\n"
        "sys.stderr.write('e' * 5_000_000)\n",
    )
    assert result["success"] is True and result["truncated"] is True
    output = result["output"]
    assert output.startswith("A" * 1000) and output.endswith("Z" * 1000)
    assert "bytes of stdout left out" in output
    assert len(output) < 1024 * 1024 + 200
    assert "bytes of stderr left out" in result["error"]
    # The server held only the capped output (generous bound; it is ~60 MB at rest).
    assert _peak_rss_mb(server.pid) < 200
    assert (await server.run(sandbox, "print('after')"))["output"] == "after\n"


async def test_output_that_looks_like_protocol_is_only_data(server: Server, sandbox: str) -> None:
    fake = '{"jsonrpc": "2.0", "id": 1, "result": {}}'
    result = await server.run(sandbox, f"print({fake!r})\nprint('\\x1b[31mred\\x1b[0m\\r\\x07')")
    assert result["output"].splitlines()[0] == fake
    assert "\x1b[31mred" in result["output"]
    assert (await server.call("list_sandboxes"))["count"] == 1


async def test_a_long_run_blocks_nothing_else(server: Server) -> None:
    slow = await server.create()
    fast = await server.create()
    done = anyio.Event()
    results: dict = {}

    async def long_run() -> None:
        results["slow"] = await server.run(
            slow,
            "import time\nt = time.time()\n"
            "while time.time() - t < 20:\n    pass\nprint('slow done')",
            timeout=60,
        )
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(long_run)
        await anyio.sleep(1)  # let the loop start
        listed = await server.call("list_sandboxes")
        statuses = {s["id"]: s["status"] for s in listed["sandboxes"]}
        assert statuses[slow] == "busy"
        quick = await server.run(fast, "print('fast')")
        # Both answered while the 20-second loop was still running.
        assert quick["output"] == "fast\n"
        assert not done.is_set()
        # The same holds for creating and removing other sandboxes.
        extra = await server.create()
        await server.call("remove_sandbox", {"sandbox_id": extra, "force": True})
        assert not done.is_set()
    assert results["slow"]["output"] == "slow done\n"


async def test_executions_in_different_sandboxes_run_in_parallel(server: Server) -> None:
    a, b = await server.create(), await server.create()
    order: list[str] = []

    async def run(sid: str, name: str, code: str) -> None:
        await server.run(sid, code)
        order.append(name)

    # b finishes first although it started second, while a still runs: not serialised.
    async with anyio.create_task_group() as tg:
        tg.start_soon(run, a, "a", "import time; time.sleep(6)")
        await anyio.sleep(0.5)
        tg.start_soon(run, b, "b", "print(1)")
    assert order == ["b", "a"]


async def test_remove_while_executing(server: Server) -> None:
    busy = await server.create()
    outcome: dict = {}

    async def long_run() -> None:
        result = await server.session.call_tool(
            "execute_python_code",
            {"sandbox_id": busy, "code": "import time; time.sleep(60)", "timeout": 120},
        )
        outcome["result"] = result

    async with anyio.create_task_group() as tg:
        tg.start_soon(long_run)
        await anyio.sleep(1)
        message = await server.error("remove_sandbox", {"sandbox_id": busy})
        assert "still active" in message
        removed = await server.call("remove_sandbox", {"sandbox_id": busy, "force": True})
        assert removed["success"] is True
    # The run ended with the sandbox, as a clear tool error rather than a hang.
    assert outcome["result"].is_error
    assert "was removed while the code was running" in outcome["result"].content[0].text
    assert (await server.call("list_sandboxes", {"include_inactive": True}))["count"] == 0
