"""Sandboxes come and go as promised: limits, reaping, shutdown, neighbours, outages."""

import asyncio
import http.client
import http.server
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import (
    ENGINE_SOCKET,
    TOOLS,
    container_exists,
    container_of,
    eventually,
    owned_by,
    process_ended,
    start_server,
)


async def test_reaper_removes_idle_sandboxes(tmp_path, docker_client) -> None:
    async with start_server({"REAPER_INTERVAL": "1"}, cwd=tmp_path) as srv:
        short = await srv.create(timeout=2)
        long = await srv.create(timeout=600)
        container = container_of(docker_client, short)
        assert await eventually(lambda: not container_exists(docker_client, container.id), 20)
        listed = await srv.call("list_sandboxes", {"include_inactive": True})
        assert [s["id"] for s in listed["sandboxes"]] == [long]
        # Said as what happened, not like a typo.
        message = await srv.error("execute_python_code", {"sandbox_id": short, "code": "1"})
        assert f"Sandbox {short} expired at " in message, message
        assert "idle for its timeout (2 s)" in message and "removed with its files" in message


async def test_stdin_close_removes_the_servers_sandboxes(tmp_path, docker_client) -> None:
    async with start_server(cwd=tmp_path) as srv:
        sid = await srv.create()
        await srv.create()
        owner = container_of(docker_client, sid).labels["omcp_py.owner"]
        # Two sandboxes, and the warm pool's (SANDBOX_POOL_SIZE=2) once it has refilled.
        assert await eventually(lambda: len(owned_by(docker_client, owner)) == 4, 20)
    assert await eventually(lambda: owned_by(docker_client, owner) == [], 10)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signals_remove_the_servers_sandboxes(tmp_path, docker_client, signum) -> None:
    async with start_server(cwd=tmp_path) as srv:
        sid = await srv.create()
        owner = container_of(docker_client, sid).labels["omcp_py.owner"]
        pid = srv.pid
        os.kill(pid, signum)
        assert await eventually(lambda: process_ended(pid), 15)
        assert owned_by(docker_client, owner) == []


async def test_docker_down_at_start(tmp_path) -> None:
    missing = tmp_path / "no-docker.sock"
    async with start_server({"DOCKER_HOST": f"unix://{missing}"}, cwd=tmp_path) as srv:
        tools = (await srv.session.list_tools()).tools
        assert {t.name for t in tools} == TOOLS
        message = await srv.error("create_sandbox")
        assert f"Docker engine not reachable at unix://{missing}" in message
        assert "start Docker" in message and "DOCKER_HOST" in message
        assert "no engine socket at that path" in message
        assert "not reachable" in await srv.error("list_sandboxes")


async def test_missing_image_is_a_clear_error(tmp_path) -> None:
    async with start_server({"DOCKER_IMAGE": "omcp-test/does-not-exist:1"}, cwd=tmp_path) as srv:
        message = await srv.error("create_sandbox")
        assert "omcp-test/does-not-exist:1" in message and "docker pull" in message
        assert "pulling it failed" in message and "omcp_py image build" in message
        assert (await srv.call("list_sandboxes"))["count"] == 0


def _without_pids_limit(path: str, answer: Any) -> Any:
    # As an engine without the pids cgroup controller says it.
    if path.endswith("/info"):
        answer["PidsLimit"] = False
    return answer


@contextmanager
def _engine_rewriting(path: Path, edit: Callable[[str, Any], Any] = _without_pids_limit):
    """The real engine, on a socket of its own, answering GETs only, each JSON answer
    passed through ``edit(request path, answer)`` (by default: `docker info` says it
    cannot limit processes)."""
    target = ENGINE_SOCKET

    class Upstream(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(target)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # the server only reads before it refuses to create
            upstream = Upstream("engine")
            upstream.request("GET", self.path)
            reply = upstream.getresponse()
            body = reply.read()
            if reply.getheader("Content-Type", "").startswith("application/json"):
                body = json.dumps(edit(self.path.split("?")[0], json.loads(body))).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.getheader("Content-Type", "text/plain"))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

        def get_request(self):  # BaseHTTPRequestHandler wants a (host, port) address
            request, _ = super().get_request()
            return request, ("engine", 0)

    server = Server(str(path), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _old_components(path: str, answer: Any) -> Any:
    # An engine whose runc and Docker Desktop predate the fixes of known escapes.
    if path.endswith("/version"):
        parts = [c for c in answer.get("Components") or [] if c.get("Name") != "runc"]
        answer["Components"] = [*parts, {"Name": "runc", "Version": "1.2.7"}]
        answer["Platform"] = {"Name": "Docker Desktop 4.44.2 (202017)"}
    return answer


async def test_known_escapes_of_the_engine_are_warned_of(tmp_path) -> None:
    sock = tmp_path / "engine.sock"
    errlog = tmp_path / "stderr.log"
    env = {"DOCKER_HOST": f"unix://{sock}", "LOG_LEVEL": "INFO"}
    with _engine_rewriting(sock, _old_components), errlog.open("w") as err:
        doctor = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-m", "omcp_py", "doctor"],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=tmp_path,
                env={**os.environ, **env},
            )
        )
        # Warnings, with their fix, between the checks (the rest fail here: this
        # engine answers reads only).
        assert "[warn] runc 1.2.7 is older than the fixes for CVE-2025-31133" in doctor.stdout
        assert "[warn] Docker Desktop 4.44.2 is older than the fix for CVE-2025-9074" in (
            doctor.stdout
        ), doctor.stdout
        assert "Traceback" not in doctor.stdout + doctor.stderr
        async with start_server(env, cwd=tmp_path, errlog=err):
            # The server says the same at start, before any tool is called.
            assert await eventually(
                lambda: "runc 1.2.7 is older than the fixes" in errlog.read_text(), 10
            ), errlog.read_text()
            # Once, though the pool, the reaper and the first check all start together.
            await asyncio.sleep(2)
            assert errlog.read_text().count("runc 1.2.7 is older than the fixes") == 1


async def test_engine_that_would_drop_a_limit_is_refused(tmp_path, docker_client) -> None:
    sock = tmp_path / "engine.sock"
    errlog = tmp_path / "stderr.log"
    with _engine_rewriting(sock), errlog.open("w") as err:
        env = {"DOCKER_HOST": f"unix://{sock}", "LOG_LEVEL": "INFO"}
        async with start_server(env, cwd=tmp_path, errlog=err) as srv:
            # Said at start, before any tool is called ...
            assert await eventually(
                lambda: "cannot enforce the process limit" in errlog.read_text(), 10
            ), errlog.read_text()
            # ... and by every create_sandbox, which starts nothing.
            message = await srv.error("create_sandbox")
            assert "cannot enforce the process limit (SANDBOX_PIDS_LIMIT)" in message
            assert "does not run sandboxes without it" in message
            assert (await srv.call("list_sandboxes"))["count"] == 0
