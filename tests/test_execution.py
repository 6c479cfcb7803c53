"""Executions never hang, never flood, never block one another."""

from pathlib import Path

import anyio
import pytest
from conftest import Server, processes_in

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


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_a_long_run_blocks_nothing_else(server: Server) -> None:
    slow = await server.create()
    fast = await server.create()
    done = anyio.Event()
    results: dict = {}

    async def long_run() -> None:
        results["slow"] = await server.run(
            slow,
            "import time\nt = time.time()\n"
            "while time.time() - t < 8:\n    pass\nprint('slow done')",
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
        # Both answered while the 8-second loop was still running.
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
