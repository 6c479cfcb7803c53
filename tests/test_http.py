"""`omcp_py serve --http` as a user starts it, driven by the SDK's streamable-HTTP
client: tokens from AUTH_TOKENS_FILE name principals, and neither principal sees or
touches the other's sandboxes; requests without a valid token get 401; a public bind
without tokens refuses to start; Host headers are checked."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
import pytest
from conftest import MARKER_VAR, Server
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from omcp_py.auth import new_token, token_hash

pytestmark = pytest.mark.any_runtime  # the transport and its checks are host-side


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HttpServer:
    def __init__(self, port: int, tokens: Path, marker: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.url = f"{self.base}/mcp"
        self.tokens = tokens
        self.marker = marker

    @asynccontextmanager
    async def session(self, token: str) -> AsyncIterator[Server]:
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=120) as client,
            streamable_http_client(self.url, http_client=client) as (read, write),
            ClientSession(read, write, read_timeout_seconds=300) as session,
        ):
            await session.initialize()
            yield Server(session, self.marker)


def _start(env: dict[str, str], *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "omcp_py", "serve", "--http", *args]
    full = {**os.environ, "LOG_LEVEL": "WARNING", **env}
    return subprocess.Popen(command, env=full, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, str]:
    found = {"alice": new_token(), "bob": new_token()}
    lines = [f"{name}:{token_hash(token)}" for name, token in found.items()]
    (tmp_path / "tokens").write_text("\n".join(["# team", *lines]) + "\n")
    return found


@pytest.fixture
def http_server(tmp_path: Path, tokens: dict[str, str]) -> Iterator[HttpServer]:
    port = _free_port()
    marker = os.urandom(8).hex()
    env = {
        "AUTH_TOKENS_FILE": str(tmp_path / "tokens"),
        "SANDBOX_POOL_SIZE": "1",
        "MAX_SANDBOXES_PER_PRINCIPAL": "2",
        "PACKAGE_CACHE_VOLUME": "omcp-test-package-cache",
        MARKER_VAR: marker,
    }
    for name in ("DOCKER_HOST", "SANDBOX_RUNTIME"):
        if name in os.environ:
            env[name] = os.environ[name]
    proc = _start(env, "--port", str(port))
    server = HttpServer(port, tmp_path / "tokens", marker)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            httpx2.get(f"{server.base}/.well-known/oauth-protected-resource/mcp", timeout=2)
            break
        except httpx2.TransportError:
            time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(60)  # the lifespan removes the sandboxes first
        except subprocess.TimeoutExpired:
            proc.kill()


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
    proc = _start({"AUTH_TOKENS_FILE": ""}, "--host", "0.0.0.0", "--port", str(_free_port()))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "refusing to serve on 0.0.0.0" in err and "AUTH_TOKENS_FILE" in err, err
