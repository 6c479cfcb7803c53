"""Executions never hang, never flood, never block one another."""

import anyio
from conftest import Server


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
