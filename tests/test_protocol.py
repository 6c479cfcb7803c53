"""The server as clients see it: a clean stdout, its entry points, real MCP clients."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import container_of
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_import_has_no_side_effects() -> None:
    code = (
        "import sys, omcp_py, omcp_py.main, omcp_py.sandbox_manager, omcp_py.cli\n"
        "import omcp_py.doctor, omcp_py.images, omcp_py.docker_host\n"
        "assert 'docker' not in sys.modules, 'docker imported at import time'\n"
        "import logging; assert not logging.getLogger().handlers\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""


def _rpc(id_: int | None, method: str, params: dict | None = None) -> str:
    message: dict = {"jsonrpc": "2.0", "method": method}
    if id_ is not None:
        message["id"] = id_
    if params is not None:
        message["params"] = params
    return json.dumps(message) + "\n"


def test_stdout_carries_only_the_protocol(tmp_path: Path, docker_client) -> None:
    requests = [
        _rpc(
            1,
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        ),
        _rpc(None, "notifications/initialized"),
        _rpc(2, "tools/list"),
        _rpc(3, "tools/call", {"name": "create_sandbox", "arguments": {}}),
    ]
    log = (tmp_path / "stderr.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "omcp_py"],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={"PATH": "/usr/bin:/bin", "LOG_LEVEL": "DEBUG"},
    )
    assert proc.stdin and proc.stdout
    for request in requests:
        proc.stdin.write(request)
    proc.stdin.flush()
    answers = {}
    while len(answers) < 3:
        line = proc.stdout.readline()
        assert line, "server closed stdout early"
        message = json.loads(line)  # every line is JSON-RPC: nothing else is printed
        assert message["jsonrpc"] == "2.0"
        if "id" in message:
            answers[message["id"]] = message
    sandbox_id = answers[3]["result"]["structuredContent"]["sandbox_id"]
    container = container_of(docker_client, sandbox_id)
    proc.stdin.write(
        _rpc(
            4,
            "tools/call",
            {
                "name": "execute_python_code",
                "arguments": {"sandbox_id": sandbox_id, "code": "print('hi')"},
            },
        )
    )
    proc.stdin.close()  # the client goes away: the server answers, cleans up and exits
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 0
    for line in rest.splitlines():
        assert json.loads(line)["jsonrpc"] == "2.0"
    log.seek(0)
    stderr = log.read()
    assert "DEBUG" in stderr  # the log went to stderr
    with pytest.raises(Exception, match=r"404|No such container"):
        container.reload()


@pytest.mark.parametrize("command", ["omcp_py", "omcp-py"])
async def test_console_scripts_serve_over_stdio(command: str, tmp_path: Path) -> None:
    params = StdioServerParameters(command=str(BIN / command), cwd=tmp_path)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        names = {tool.name for tool in (await session.list_tools()).tools}
        assert "execute_python_code" in names


async def test_uvx_from_the_checkout_serves_over_stdio(tmp_path: Path) -> None:
    uvx = shutil.which("uvx", path=str(BIN)) or shutil.which("uvx")
    assert uvx, "uvx is needed (uv is a dev dependency)"
    # uv fetches the dependencies: it needs the machine's proxy and CA settings.
    passed = (
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    )
    env = {k: v for k, v in os.environ.items() if k in passed or k.startswith("UV_")}
    params = StdioServerParameters(
        command=uvx, args=["--from", str(ROOT), "omcp_py"], cwd=tmp_path, env=env
    )
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write, read_timeout_seconds=240) as session,
    ):
        await session.initialize()
        listed = await session.call_tool("list_sandboxes", {})
        assert listed.structured_content == {"success": True, "sandboxes": [], "count": 0}


def test_mcp_inspector_cli(tmp_path: Path, docker_client) -> None:
    npx = shutil.which("npx")
    assert npx, "npx (Node.js) is needed for the MCP Inspector test"
    inspector = [npx, "-y", "@modelcontextprotocol/inspector", "--cli"]
    listed = subprocess.run(
        [*inspector, "--method", "tools/list", "--", sys.executable, "-m", "omcp_py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr
    assert {t["name"] for t in json.loads(listed.stdout)["tools"]} >= {
        "create_sandbox",
        "execute_python_code",
    }
    called = subprocess.run(
        [
            *inspector,
            str(BIN / "omcp_py"),
            "--method",
            "tools/call",
            "--tool-name",
            "create_sandbox",
            "--tool-arg",
            "timeout=60",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert called.returncode == 0, called.stderr
    result = json.loads(called.stdout)
    assert result["isError"] is False
    sandbox_id = result["structuredContent"]["sandbox_id"]
    # The Inspector closed the server's stdin; the server removed its sandbox.
    assert (
        docker_client.containers.list(
            all=True, filters={"label": f"omcp_py.sandbox-id={sandbox_id}"}
        )
        == []
    )
