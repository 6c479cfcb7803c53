"""The lifecycle under load and accidents: concurrent creates against the limit, many
executions on one connection, removal mid-run, containers and servers killed, the
engine going away and coming back."""

import os
import signal

import anyio
import pytest
from conftest import (
    Server,
    container_exists,
    container_of,
    engine_proxy,
    eventually,
    owned_by,
    start_server,
)


@pytest.mark.any_runtime
async def test_max_sandboxes_holds_under_concurrent_creates(tmp_path, docker_client) -> None:
    async with start_server({"MAX_SANDBOXES": "10"}, cwd=tmp_path) as srv:
        outcomes: list = []

        async def create() -> None:
            result = await srv.session.call_tool("create_sandbox", {})
            outcomes.append(result)

        async with anyio.create_task_group() as tg:
            for _ in range(50):  # many more than fit: slots freed by reconciling race them
                tg.start_soon(create)
        ok = [r for r in outcomes if not r.is_error]
        refused = [r.content[0].text for r in outcomes if r.is_error]
        assert len(ok) == 10 and len(refused) == len(outcomes) - 10 == 40, refused
        assert all("Maximum number of sandboxes reached (10)" in m for m in refused), refused
        owner = container_of(docker_client, ok[0].structured_content["sandbox_id"]).labels[
            "omcp_py.owner"
        ]
        assert len(owned_by(docker_client, owner)) == 10
        # A freed slot can be used again.
        await srv.call(
            "remove_sandbox", {"sandbox_id": ok[0].structured_content["sandbox_id"], "force": True}
        )
        await srv.create()


@pytest.mark.any_runtime
async def test_killed_server_leaves_orphans_that_the_next_server_reaps(
    tmp_path, docker_client
) -> None:
    async with start_server(cwd=tmp_path) as neighbour:
        kept = await neighbour.create()
        async with start_server(cwd=tmp_path) as doomed:
            orphan = await doomed.create()
            # Sandboxes of another server are "not found" here, and vice versa.
            message = await neighbour.error(
                "execute_python_code", {"sandbox_id": orphan, "code": "1"}
            )
            assert "No sandbox" in message
            assert "No sandbox" in await doomed.error(
                "remove_sandbox", {"sandbox_id": kept, "force": True}
            )
            os.kill(doomed.pid, signal.SIGKILL)
            await anyio.sleep(0.5)
        orphan_container = container_of(docker_client, orphan)
        assert orphan_container.status == "running"  # nobody cleaned up after SIGKILL

        async with start_server(cwd=tmp_path) as successor:
            assert await eventually(
                lambda: not container_exists(docker_client, orphan_container.id), 20
            )
            assert (await successor.call("list_sandboxes"))["count"] == 0
            # The live neighbour's sandbox was left alone.
            assert (await neighbour.run(kept, "print('mine')"))["output"] == "mine\n"


@pytest.mark.parametrize("how", ["kill", "remove"])
async def test_sandbox_killed_behind_our_back(server, docker_client, how) -> None:
    sid = await server.create()
    other = await server.create()
    container = container_of(docker_client, sid)
    if how == "kill":
        container.kill()
    else:
        container.remove(force=True)
    message = await server.error("execute_python_code", {"sandbox_id": sid, "code": "print(1)"})
    assert "has stopped or was removed" in message or "No sandbox" in message
    listed = await server.call("list_sandboxes", {"include_inactive": True})
    assert [s["id"] for s in listed["sandboxes"]] == [other]
    assert (await server.run(other, "print('fine')"))["output"] == "fine\n"


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
        assert "is running code or an install right now" in message and "force=true" in message
        removed = await server.call("remove_sandbox", {"sandbox_id": busy, "force": True})
        assert removed["success"] is True
    # The run ended with the sandbox, as a clear tool error rather than a hang.
    assert outcome["result"].is_error
    assert "was removed while the code was running" in outcome["result"].content[0].text
    assert (await server.call("list_sandboxes", {"include_inactive": True}))["count"] == 0


@pytest.mark.slow
async def test_200_concurrent_executions_over_10_sandboxes_on_one_connection(
    tmp_path, docker_client
) -> None:
    async with start_server({"MAX_SANDBOXES": "10"}, cwd=tmp_path) as srv:
        sandboxes = [await srv.create() for _ in range(10)]
        answers: dict[int, dict] = {}

        async def run(i: int) -> None:
            answers[i] = await srv.run(sandboxes[i % 10], f"print({i} * 3)")

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(run, i)
        # All answered, each with its own output: none lost, none crossed.
        assert sorted(answers) == list(range(200))
        assert all(answers[i]["output"] == f"{i * 3}\n" for i in answers)
        assert all(answers[i]["success"] for i in answers)


@pytest.mark.any_runtime
async def test_engine_outage_and_recovery_without_restart(tmp_path, docker_client) -> None:
    sock = tmp_path / "engine.sock"
    env = {"DOCKER_HOST": f"unix://{sock}", "SANDBOX_POOL_SIZE": "0"}
    async with start_server(env, cwd=tmp_path) as srv:
        assert "not reachable" in await srv.error("create_sandbox")
        async with engine_proxy(sock):
            sid = await srv.create()
            assert (await srv.run(sid, "print('up')"))["output"] == "up\n"
        # Engine gone while the server runs: clear errors, no hang.
        assert "not reachable" in await srv.error("list_sandboxes")
        assert "not reachable" in await srv.error(
            "execute_python_code", {"sandbox_id": sid, "code": "1"}
        )
        async with engine_proxy(sock):
            assert (await srv.run(sid, "print('back')"))["output"] == "back\n"
            assert (await srv.call("list_sandboxes"))["count"] == 1
            await srv.call("remove_sandbox", {"sandbox_id": sid, "force": True})
