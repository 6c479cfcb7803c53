"""The tool contract, through the real MCP client, against the real engine."""

from datetime import datetime

import pytest
from conftest import TOOLS, Server, ToolFailed, start_server


async def test_tools_list_describes_every_tool(server: Server) -> None:
    tools = {t.name: t for t in (await server.session.list_tools()).tools}
    assert set(tools) == TOOLS
    # The two tools whose results carry media declare no output schema: a client that
    # keeps only structuredContent (Claude Code) would drop their images.
    media = {"execute_python_code", "download_file"}
    for name, tool in tools.items():
        assert tool.title and tool.description and tool.annotations is not None
        assert (tool.output_schema is None) == (name in media), name
    assert tools["list_sandboxes"].annotations.read_only_hint is True
    assert tools["remove_sandbox"].annotations.destructive_hint is True
    props = tools["execute_python_code"].input_schema["properties"]
    assert props["timeout"]["default"] == 30
    assert tools["create_sandbox"].input_schema["properties"]["timeout"]["default"] == 300
    # Only the installer reaches beyond the machine.
    assert [n for n, t in tools.items() if t.annotations.open_world_hint] == ["install_package"]
    assert tools["install_package"].input_schema["required"] == ["sandbox_id", "package"]


async def test_create_list_execute_remove(server: Server) -> None:
    created = await server.call("create_sandbox", {})
    sid = created["sandbox_id"]
    assert created["success"] is True
    datetime.fromisoformat(created["created_at"])
    datetime.fromisoformat(created["last_used"])

    listed = await server.call("list_sandboxes")
    assert listed["success"] and listed["count"] == 1
    entry = listed["sandboxes"][0]
    assert entry["id"] == sid and entry["status"] == "active" and entry["timeout"] == 300

    result = await server.run(sid, "print(6 * 7)")
    assert result == result | {
        "success": True,
        "output": "42\n",
        "error": None,
        "exit_code": 0,
        "timed_out": False,
    }
    assert result["duration_ms"] > 0

    # Idle (nothing running), it goes without force, right after use, as the
    # instructions say: create, execute, then remove.
    removed = await server.call("remove_sandbox", {"sandbox_id": sid})
    assert removed["success"] is True
    assert (await server.call("list_sandboxes"))["count"] == 0
    assert "No sandbox" in await server.error(
        "execute_python_code", {"sandbox_id": sid, "code": "1"}
    )


async def test_failing_code_is_a_result_not_a_tool_error(server: Server, sandbox: str) -> None:
    result = await server.run(sandbox, "print('before')\nraise ValueError('boom')")
    assert result["success"] is False
    assert result["exit_code"] == 1
    assert result["output"] == "before\n"
    assert "Traceback" in result["error"] and "ValueError: boom" in result["error"]
    assert 'File "<sandbox>", line 2' in result["error"]

    exited = await server.run(sandbox, "import sys; sys.exit(3)")
    assert (exited["success"], exited["exit_code"]) == (False, 3)
    syntax = await server.run(sandbox, "def (:")
    assert syntax["success"] is False and "SyntaxError" in syntax["error"]


async def test_files_persist_between_executions(server: Server, sandbox: str) -> None:
    await server.run(sandbox, "open('data.txt', 'w').write('kept')")
    result = await server.run(
        sandbox,
        "import os\n"
        "print(os.getcwd(), open('data.txt').read())\n"
        "open('/tmp/t', 'w').write('x'); open(os.path.expanduser('~/h'), 'w').write('y')\n"
        "print(os.path.expanduser('~'))",
    )
    assert result["output"] == "/sandbox kept\n/home/sandbox\n"


async def test_inactive_sandboxes_are_hidden_unless_asked(tmp_path) -> None:
    async with start_server({"REAPER_INTERVAL": "3600"}, cwd=tmp_path) as srv:
        sid = await srv.create(timeout=1)
        keep = await srv.create()
        import anyio

        await anyio.sleep(1.5)
        listed = await srv.call("list_sandboxes")
        assert [s["id"] for s in listed["sandboxes"]] == [keep]
        everything = await srv.call("list_sandboxes", {"include_inactive": True})
        statuses = {s["id"]: s["status"] for s in everything["sandboxes"]}
        assert statuses == {sid: "idle", keep: "active"}
        # Idle past its timeout: removable without force.
        assert (await srv.call("remove_sandbox", {"sandbox_id": sid}))["success"] is True


async def test_tool_failure_does_not_raise_in_client(server: Server) -> None:
    with pytest.raises(ToolFailed, match="No sandbox"):
        await server.call("remove_sandbox", {"sandbox_id": "0" * 12})
