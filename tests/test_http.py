"""`omcp_py serve --http` as a user starts it, driven by the SDK's streamable-HTTP
client: tokens from AUTH_TOKENS_FILE name principals, and neither principal sees or
touches the other's sandboxes; requests without a valid token get 401; a public bind
without tokens refuses to start; Host headers are checked."""

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from conftest import MARKER_VAR, Server, http_session, wait_for_http
from engines import free_port

from omcp_py.auth import new_token, token_hash

pytestmark = pytest.mark.any_runtime  # the transport and its checks are host-side


class HttpServer:
    def __init__(self, port: int, tokens: Path, marker: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.url = f"{self.base}/mcp"
        self.tokens = tokens
        self.marker = marker

    def session(
        self, token: str, handshake: str = "initialize"
    ) -> AbstractAsyncContextManager[Server]:
        return http_session(self.url, token, self.marker, handshake)


def _start(env: dict[str, str], *args: str, log: Path | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "omcp_py", "serve", "--http", *args]
    full = {**os.environ, "LOG_LEVEL": "WARNING", **env}
    # A long-running server logs to a file: a pipe nobody reads would fill and stop it.
    stderr = log.open("w") if log else subprocess.PIPE
    return subprocess.Popen(command, env=full, stderr=stderr, text=True)


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, str]:
    found = {"alice": new_token(), "bob": new_token()}
    lines = [f"{name}:{token_hash(token)}" for name, token in found.items()]
    (tmp_path / "tokens").write_text("\n".join(["# team", *lines]) + "\n")
    return found


@contextmanager
def _serving(tmp_path: Path, **settings: str) -> Iterator[HttpServer]:
    port = free_port()
    marker = os.urandom(8).hex()
    env = {
        "AUTH_TOKENS_FILE": str(tmp_path / "tokens"),
        "PACKAGE_CACHE_VOLUME": "omcp-test-package-cache",
        MARKER_VAR: marker,
        **settings,
    }
    for name in ("DOCKER_HOST", "SANDBOX_RUNTIME"):
        if name in os.environ:
            env[name] = os.environ[name]
    log = tmp_path / f"server-{port}.log"
    proc = _start(env, "--port", str(port), log=log)
    server = HttpServer(port, tmp_path / "tokens", marker)
    up = wait_for_http(server.base, 60, alive=lambda: proc.poll() is None)
    assert up, log.read_text()[-3000:]
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(60)  # the lifespan removes the sandboxes first
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def http_server(tmp_path: Path, tokens: dict[str, str]) -> Iterator[HttpServer]:
    with _serving(tmp_path, SANDBOX_POOL_SIZE="1", MAX_SANDBOXES_PER_PRINCIPAL="2") as server:
        yield server


async def test_each_principal_sees_and_touches_only_its_own_sandboxes(
    http_server: HttpServer, tokens: dict[str, str]
) -> None:
    async with http_server.session(tokens["alice"]) as alice:
        mine = await alice.create()
        assert (await alice.run(mine, "print(6 * 7)"))["output"] == "42\n"
        async with http_server.session(tokens["bob"]) as bob:
            theirs = await bob.create()
            assert (await bob.call("list_sandboxes"))["count"] == 1
            listed = (await alice.call("list_sandboxes"))["sandboxes"]
            assert [s["id"] for s in listed] == [mine]
            never = "0" * 32
            calls = [
                ("execute_python_code", {"code": "print(1)"}),
                ("reset_sandbox_state", {}),
                ("install_package", {"package": "six"}),
                ("upload_file", {"path": "a.txt", "text": "x"}),
                ("download_file", {"path": "a.txt"}),
                ("list_files", {}),
                ("remove_sandbox", {"force": True}),
            ]
            for name, args in calls:
                # Another's sandbox reads exactly like one that never was.
                said = await bob.error(name, {"sandbox_id": mine, **args})
                unknown = await bob.error(name, {"sandbox_id": never, **args})
                assert said == unknown.replace(never, mine), (name, said)
                assert "No sandbox" in said, (name, said)
            # Alice's sandbox is untouched, and so is Bob's.
            assert (await alice.run(mine, "print('still here')"))["output"] == "still here\n"
            assert (await bob.run(theirs, "print('mine')"))["output"] == "mine\n"

            second = await alice.create()
            refused = await alice.error("create_sandbox", {})
            assert "MAX_SANDBOXES_PER_PRINCIPAL=2" in refused, refused
            await alice.call("remove_sandbox", {"sandbox_id": second})
            assert (await bob.call("list_sandboxes"))["count"] == 1


async def test_requests_without_a_valid_token_are_refused(
    http_server: HttpServer, tokens: dict[str, str]
) -> None:
    request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Accept": "application/json, text/event-stream"}
    for token in (None, "omcp_wrong", token_hash(tokens["alice"])):
        sent = headers | ({"Authorization": f"Bearer {token}"} if token else {})
        answer = httpx2.post(http_server.url, json=request, headers=sent, timeout=10)
        assert answer.status_code == 401, (token, answer.status_code, answer.text)
        assert answer.headers["www-authenticate"].startswith("Bearer "), answer.headers
        assert "resource_metadata=" in answer.headers["www-authenticate"]
    metadata = httpx2.get(f"{http_server.base}/.well-known/oauth-protected-resource/mcp")
    assert metadata.json()["resource"] == http_server.url

    async with http_server.session(tokens["bob"]) as bob:
        sid = await bob.create()
        # Bob's line is removed while his session is open: his next request is refused.
        alice_line = f"alice:{token_hash(tokens['alice'])}\n"
        http_server.tokens.write_text(alice_line)
        answer = httpx2.post(
            http_server.url,
            json=request,
            headers=headers | {"Authorization": f"Bearer {tokens['bob']}"},
            timeout=10,
        )
        assert answer.status_code == 401, answer.text
        with pytest.raises(Exception):  # noqa: B017 - the transport's error for a 401
            await bob.run(sid, "print(1)")
    async with http_server.session(tokens["alice"]) as alice:
        assert (await alice.call("list_sandboxes"))["count"] == 0


def test_a_host_header_of_another_name_is_refused(
    http_server: HttpServer, tokens: dict[str, str]
) -> None:
    # A web page that rebinds its own name to 127.0.0.1 sends its own name as Host (and
    # is refused even with a token, which such a page would not have).
    port = http_server.base.rsplit(":", 1)[1]
    for host in (f"attacker.example:{port}", f"127.0.0.1:{port}"):
        answer = httpx2.post(
            http_server.url,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "test", "version": "1"},
                },
            },
            headers={
                "Host": host,
                "Authorization": f"Bearer {tokens['alice']}",
                "Accept": "application/json, text/event-stream",
            },
            timeout=10,
        )
        expected = host.startswith("127.0.0.1")
        assert (answer.status_code < 400) == expected, (host, answer.status_code, answer.text)


def test_a_public_bind_without_tokens_refuses_to_start() -> None:
    proc = _start({"AUTH_TOKENS_FILE": ""}, "--host", "0.0.0.0", "--port", str(free_port()))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "refusing to serve on 0.0.0.0" in err and "AUTH_TOKENS_FILE" in err, err


def test_the_inspector_cli_drives_a_loopback_server_without_tokens(tmp_path: Path) -> None:
    npx = shutil.which("npx")
    assert npx, "npx (Node.js) is needed for the MCP Inspector test"
    port = free_port()
    proc = _start({"AUTH_TOKENS_FILE": "", "SANDBOX_POOL_SIZE": "0"}, "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_for_http(base, 60, alive=lambda: proc.poll() is None)
        inspector = [npx, "-y", "@modelcontextprotocol/inspector", "--cli", f"{base}/mcp"]
        inspector += ["--transport", "http", "--method"]

        def call(*args: str) -> dict:
            done = subprocess.run(
                [*inspector, *args], cwd=tmp_path, capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)

        assert "execute_python_code" in {t["name"] for t in call("tools/list")["tools"]}
        created = call("tools/call", "--tool-name", "create_sandbox")
        sid = created["structuredContent"]["sandbox_id"]
        # Another connection, the same (local) caller: the sandbox is there.
        ran = call(
            "tools/call",
            "--tool-name",
            "execute_python_code",
            "--tool-arg",
            f"sandbox_id={sid}",
            "code=print(6*7)",
        )
        assert ran["isError"] is False and "42" in json.dumps(ran["content"]), ran
    finally:
        proc.terminate()
        proc.wait(60)


async def test_a_cancelled_call_and_a_dropped_client_stop_their_runs(
    http_server: HttpServer, tokens: dict[str, str]
) -> None:
    async def idle(watcher: Server, sid: str, within: float = 0.0) -> bool:
        deadline = time.monotonic() + within
        while True:
            listed = (await watcher.call("list_sandboxes"))["sandboxes"]
            if next(s["status"] for s in listed if s["id"] == sid) != "busy":
                return True
            if time.monotonic() > deadline:
                return False
            await anyio.sleep(0.25)

    long_run = {"code": "import time\ntime.sleep(120)", "timeout": 300}
    async with http_server.session(tokens["alice"]) as watcher:
        sid = await watcher.create()
        # The caller gives up on the call: the client sends notifications/cancelled.
        async with http_server.session(tokens["alice"]) as alice:
            with anyio.move_on_after(3):
                await alice.call("execute_python_code", {"sandbox_id": sid, **long_run})
            assert await idle(watcher, sid, within=20), "the cancelled run went on"
        # The client goes away in the middle of a run: its connection closes.
        async with anyio.create_task_group() as tg:

            async def drop() -> None:
                async with http_server.session(tokens["alice"]) as gone:
                    await gone.call("execute_python_code", {"sandbox_id": sid, **long_run})

            tg.start_soon(drop)
            await anyio.sleep(3)
            assert not await idle(watcher, sid)
            tg.cancel_scope.cancel()
        assert await idle(watcher, sid, within=20), "the dropped client's run went on"
        assert (await watcher.run(sid, "print('next')"))["output"] == "next\n"


async def test_twenty_callers_times_ten_runs_lose_nothing(
    tmp_path: Path, tokens: dict[str, str]
) -> None:
    settings = {"MAX_SANDBOXES": "20", "MAX_SANDBOXES_PER_PRINCIPAL": "10"}
    with _serving(tmp_path, SANDBOX_POOL_SIZE="0", **settings) as server:
        outputs: dict[int, list[str]] = {}

        async def caller(n: int) -> None:
            async with server.session(tokens["alice" if n % 2 else "bob"]) as me:
                sid = await me.create()
                outputs[n] = [
                    (await me.run(sid, f"print({n} * 100 + {i})"))["output"] for i in range(10)
                ]

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(caller, n)
    assert outputs == {n: [f"{n * 100 + i}\n" for i in range(10)] for n in range(20)}


async def test_both_eras_progress_and_the_body_bound_over_http(
    http_server: HttpServer, tokens: dict[str, str]
) -> None:
    notes: list[float] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        notes.append(done)

    # A 2026-07-28 client (server/discover, no session) and a 2025-era one (initialize)
    # are the same principal: one makes the sandbox, the other uses it.
    async with http_server.session(tokens["alice"], handshake="discover") as modern:
        sid = await modern.create()
        async with http_server.session(tokens["alice"]) as legacy:
            code = "import time\nfor i in range(5):\n    print(i, flush=True)\n    time.sleep(1)"
            result = await legacy.session.call_tool(
                "execute_python_code",
                {"sandbox_id": sid, "code": code, "timeout": 30},
                progress_callback=progress,
            )
            assert not result.is_error, result
            assert len(notes) >= 1, notes  # every 2 s of a 5 s run
        # A body past the bound (an upload of MAX_UPLOAD_SIZE as base64, and room) is
        # refused before it is read whole.
        answer = httpx2.post(
            http_server.url,
            content=b"{" + b" " * (20 * 1024 * 1024) + b"}",
            headers={
                "Authorization": f"Bearer {tokens['alice']}",
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
            },
            timeout=60,
        )
        assert answer.status_code == 413, (answer.status_code, answer.text[:200])
        assert (await modern.run(sid, "print('after')"))["output"] == "after\n"


INSPECTOR_2 = "@modelcontextprotocol/inspector@2.12.0"


def test_the_inspector_cli_with_tokens_made_by_the_token_command(tmp_path: Path) -> None:
    """Tokens made as an operator makes them (`omcp_py token new NAME`, which prints
    the token and adds its line), presented by the MCP Inspector CLI's --header."""
    npx = shutil.which("npx")
    assert npx, "npx (Node.js) is needed for the MCP Inspector test"
    tokens = tmp_path / "tokens"
    tokens.write_text("")
    made = {}
    for name in ("carol", "dave"):
        done = subprocess.run(
            [sys.executable, "-m", "omcp_py", "token", "new", name],
            env={**os.environ, "AUTH_TOKENS_FILE": str(tokens)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        made[name] = done.stdout.strip()
        assert f"added {name} to {tokens}" in done.stderr
    assert [line.partition(":")[0] for line in tokens.read_text().split()] == ["carol", "dave"]
    with _serving(tmp_path, SANDBOX_POOL_SIZE="0") as server:

        def call(token: str | None, *args: str) -> subprocess.CompletedProcess:
            # --header came with the Inspector's 2.x CLI (0.x had none).
            command = [npx, "-y", INSPECTOR_2, "--cli", server.url]
            command += ["--transport", "http"]
            if token:
                command += ["--header", f"Authorization: Bearer {token}"]
            return subprocess.run(
                [*command, "--method", *args],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=300,
            )

        def answer(token: str, *args: str) -> dict:
            done = call(token, *args)
            # The 2.x CLI exits 5 for a tool result with isError, and prints it.
            assert done.returncode in (0, 5), done.stderr
            return json.loads(done.stdout)

        created = answer(made["carol"], "tools/call", "--tool-name", "create_sandbox")
        sid = created["structuredContent"]["sandbox_id"]
        listed = answer(made["carol"], "tools/call", "--tool-name", "list_sandboxes")
        assert [s["id"] for s in listed["structuredContent"]["sandboxes"]] == [sid]
        # Dave, through the same Inspector, neither sees nor runs in Carol's sandbox.
        his = answer(made["dave"], "tools/call", "--tool-name", "list_sandboxes")
        assert his["structuredContent"]["count"] == 0, his
        run = [
            "tools/call",
            "--tool-name",
            "execute_python_code",
            "--tool-arg",
            f"sandbox_id={sid}",
        ]
        refused = answer(made["dave"], *run, "code=print(1)")
        assert refused["isError"] is True and "No sandbox" in json.dumps(refused["content"])
        ran = answer(made["carol"], *run, "code=print(6*7)")
        assert ran["isError"] is False and "42" in json.dumps(ran["content"]), ran
        # Without a token the Inspector is turned away: it reads the 401's challenge
        # and would start OAuth, which needs a person at a terminal.
        turned_away = call(None, "tools/list")
        assert turned_away.returncode != 0
        assert '"code":"auth_required"' in turned_away.stderr, turned_away.stderr[-2000:]
