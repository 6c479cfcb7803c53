"""What comes out of a sandbox is hostile input: link targets and file names that are
not UTF-8, forged figures, files that would balloon as JSON, listings larger than a
frame, a sandbox at its process limit, dead pool sandboxes, and a request the SDK
cannot parse. After each, the server still answers."""

import json
import os
import select
import subprocess
import sys
import time

import anyio
from conftest import Server, engine_proxy, eventually, fields, start_server

GVISOR = "runsc" in os.environ.get("SANDBOX_RUNTIME", "")


async def alive(server: Server) -> None:
    """The server's process answers, and so does a fresh sandbox."""
    with anyio.fail_after(30):
        await server.call("list_sandboxes")
        sid = await server.create()
        assert (await server.run(sid, "print('ok')"))["output"] == "ok\n"


async def test_a_link_target_that_is_not_utf8(server: Server, sandbox: str) -> None:
    await server.run(sandbox, "import os\nos.symlink(b'\\xff\\xfe', b'/sandbox/report.csv')")
    message = await server.error("download_file", {"sandbox_id": sandbox, "path": "report.csv"})
    assert "link" in message, message
    listed = await server.call("list_files", {"sandbox_id": sandbox})
    [entry] = [e for e in listed["entries"] if e["path"] == "report.csv"]
    assert entry["type"] == "symlink" and entry["target"] == "\ufffd\ufffd", entry
    await alive(server)


async def test_a_file_name_that_is_not_utf8(server: Server, sandbox: str) -> None:
    await server.run(
        sandbox,
        "import os\nos.makedirs('/sandbox/d/e')\n"
        "open(b'/sandbox/d/e/\\xff\\xfeend.txt', 'w').write('x')\n"
        "open('/sandbox/d/plain.txt', 'w').write('y')",
    )
    for path in (".", "d", "d/e"):
        listed = await server.call("list_files", {"sandbox_id": sandbox, "path": path})
        names = [e["path"] for e in listed["entries"]]
        assert any(n.endswith("\ufffd\ufffdend.txt") for n in names), (path, names)
    got = await server.call("download_file", {"sandbox_id": sandbox, "path": "d/plain.txt"})
    assert got["text"] == "y"
    await alive(server)


# The code finds the pipe on which its process reports its status to PID 1 and writes
# its own: one real 1x1 PNG, one "PNG" whose data holds a lone surrogate, one PNG
# that is JPEG bytes, one of bad base64, then 3,000 "figures" of HTML. It ends at once.
FORGE = r"""
import fcntl, json, os, struct, zlib, base64
def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
png = (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 1, 1, 8, 0, 0, 0, 0))
       + chunk(b'IDAT', zlib.compress(b'\x00\x00')) + chunk(b'IEND', b''))
good = base64.b64encode(png).decode()
images = [{'mime': 'image/png', 'width': 99999, 'height': 99999, 'data': good},
          {'mime': 'image/png', 'width': 1, 'height': 1, 'data': 'iVBORw0K\ud800'},
          {'mime': 'image/png', 'width': 1, 'height': 1,
           'data': base64.b64encode(b'\xff\xd8\xff\xe0' + b'\0' * 20).decode()},
          {'mime': 'image/jpeg', 'width': 1, 'height': 1, 'data': '!!!not base64!!!'}]
images += [{'mime': 'text/html', 'width': 1, 'height': 1, 'data': 'PGI+aGk8L2I+'}] * 3000
line = json.dumps({'exit_code': 0, 'images': images, 'images_left_out': 0}) + '\n'
for fd in map(int, os.listdir('/proc/self/fd')):
    try:
        if fd > 2 and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
            os.write(fd, line.encode())
    except OSError:
        pass
os._exit(0)
"""


async def test_forged_figures_are_checked(server: Server, sandbox: str) -> None:
    result = await server.session.call_tool(
        "execute_python_code", {"sandbox_id": sandbox, "code": FORGE, "timeout": 20}
    )
    assert not result.is_error, result.content
    structured = fields(result)
    images = [block for block in result.content if block.type == "image"]
    assert len(images) == 1 and images[0].mime_type == "image/png", structured
    # Its size is read from the image, not taken from what the code said.
    assert structured["images"] == [
        {"mime_type": "image/png", "width": 1, "height": 1, "size": structured["images"][0]["size"]}
    ]
    assert structured["images_left_out"] == 3003, structured
    error = structured["error"]
    for reason in ("not a PNG image", "not base64", "not a PNG or JPEG image", "more than 20"):
        assert reason in error, error
    await alive(server)


async def test_text_that_would_balloon_as_json_comes_as_bytes(server: Server, sandbox: str):
    def wire(result) -> int:
        return len(result.model_dump_json(by_alias=True, exclude_none=True))

    async def download(path: str):
        return await server.session.call_tool(
            "download_file", {"sandbox_id": sandbox, "path": path}
        )

    # 600 KiB of \x01 is valid UTF-8, but each byte is six as JSON.
    await server.run(sandbox, "open('/sandbox/ctl.bin', 'wb').write(b'\\x01' * 600 * 1024)")
    result = await download("ctl.bin")
    assert not result.is_error, result.content
    assert fields(result)["kind"] == "binary" and fields(result)["text"] is None
    assert wire(result) < (1 << 20), wire(result)
    # Plain text comes as text, once, not escaped inside the summary's JSON.
    await server.run(sandbox, "open('/sandbox/t.txt', 'w').write('\"a\"\\n' * 100000)")
    result = await download("t.txt")
    assert fields(result)["kind"] == "text" and result.structured_content is None
    assert result.content[1].text == '"a"\n' * 100000
    assert "text" not in json.loads(result.content[0].text)
    # Each 4-byte line is 7 bytes as JSON; sent twice it would be 14.
    assert wire(result) < 700_000 + 10_000, wire(result)
    # 700 kB of quotes would be 1.4 MB as JSON text: it comes as bytes (933 kB base64).
    await server.run(sandbox, "open('/sandbox/q.txt', 'w').write('\"' * 700_000)")
    result = await download("q.txt")
    assert not result.is_error, result.content
    assert fields(result)["kind"] == "binary" and wire(result) < (1 << 20), wire(result)
    # 1 MB of them fits no form: refused, saying why and what to do.
    await server.run(sandbox, "open('/sandbox/q.txt', 'w').write('\"' * 1_000_000)")
    message = await server.error("download_file", {"sandbox_id": sandbox, "path": "q.txt"})
    assert "/sandbox/q.txt is 1,000,000 bytes; as a result it would take" in message, message
    assert "over MAX_RESULT_SIZE=1m" in message
    await alive(server)


async def test_a_listing_larger_than_a_frame_is_cut(server: Server, sandbox: str) -> None:
    # 1,000 links with 4,000-byte targets: a 4 MB answer if nothing bounded it.
    await server.run(
        sandbox,
        "import os\nos.mkdir('/sandbox/l')\n"
        "for i in range(1000):\n"
        "    os.symlink('t' * 4000, '/sandbox/l/%04d' % i)",
    )
    for _ in range(2):  # and again: nothing is left broken
        with anyio.fail_after(30):
            result = await server.session.call_tool(
                "list_files", {"sandbox_id": sandbox, "path": "l"}
            )
        assert not result.is_error, result.content
        listed = result.structured_content
        assert listed["truncated"] is True and 0 < listed["count"] <= 1000
        assert all(len(e["target"]) <= 520 for e in listed["entries"])
        assert len(result.model_dump_json(by_alias=True)) < 2 * (1 << 20)
    assert (await server.run(sandbox, "print('still')"))["output"] == "still\n"
    await alive(server)


async def test_file_tools_answer_at_the_process_limit(tmp_path) -> None:
    env = {"SANDBOX_PIDS_LIMIT": "32", "SANDBOX_POOL_SIZE": "0"}
    async with start_server(env, cwd=tmp_path) as server:
        sid = await server.create(stateful=True)
        # Threads of the stateful interpreter live on after the run and hold pids.
        held = await server.run(
            sid,
            "import threading, time\nthreads = []\n"
            "while True:\n"
            "    try:\n"
            "        t = threading.Thread(target=time.sleep, args=(3600,), daemon=True)\n"
            "        t.start(); threads.append(t)\n"
            "    except RuntimeError:\n"
            "        break\n"
            "print(len(threads))",
        )
        assert int(held["output"]) > 0, held
        started = time.monotonic()
        result = await server.session.call_tool("list_files", {"sandbox_id": sid})
        assert time.monotonic() - started < 15
        if result.is_error:
            assert "process limit (SANDBOX_PIDS_LIMIT=32)" in result.content[0].text, result
        else:
            assert GVISOR, "under runc the helper cannot be forked at the limit"
        await server.call("reset_sandbox_state", {"sandbox_id": sid})
        assert (await server.call("list_files", {"sandbox_id": sid}))["success"] is True
        await alive(server)


async def test_a_predictable_upload_name_cannot_be_taken(server: Server, sandbox: str) -> None:
    # The helper's temporary name was .omcp-upload-<its pid>: code that made those
    # names first made every upload fail.
    await server.run(
        sandbox,
        "for pid in range(1, 3000):\n    open('/sandbox/.omcp-upload-%d' % pid, 'w').close()",
    )
    done = await server.call(
        "upload_file", {"sandbox_id": sandbox, "path": "in.txt", "text": "hello"}
    )
    assert done["size"] == 5
    assert (await server.run(sandbox, "print(open('in.txt').read())"))["output"] == "hello\n"


async def test_the_pool_hands_over_only_running_sandboxes(tmp_path, docker_client) -> None:
    async with start_server({"SANDBOX_POOL_SIZE": "2"}, cwd=tmp_path) as server:
        mine = {"label": f"omcp_py.owner-pid={server.pid}"}

        def pool() -> list[dict]:
            # Before any create_sandbox, every container of this server is the pool's.
            return docker_client.api.containers(all=True, filters=mine)

        assert await eventually(lambda: len(pool()) == 2, 30), pool()
        for container in pool():
            docker_client.api.remove_container(container["Id"], force=True)
        sid = await server.create()
        assert (await server.run(sid, "print('fresh')"))["output"] == "fresh\n"


async def test_with_the_engine_gone_create_fails_even_from_the_pool(tmp_path, docker_client):
    sock = tmp_path / "engine.sock"
    env = {"DOCKER_HOST": f"unix://{sock}", "SANDBOX_POOL_SIZE": "1"}
    async with start_server(env, cwd=tmp_path) as server:
        async with engine_proxy(sock):
            ready = {"label": f"omcp_py.owner-pid={server.pid}"}
            assert await eventually(
                lambda: len(docker_client.api.containers(filters=ready)) == 1, 30
            )
        message = await server.error("create_sandbox")
        assert "not reachable" in message, message
        async with engine_proxy(sock):
            sid = await server.create()
            assert (await server.run(sid, "print('back')"))["output"] == "back\n"


def test_a_request_the_sdk_cannot_parse_gets_an_answer(tmp_path) -> None:
    # A lone surrogate is valid JSON to Python, but not to the SDK's parser: it dropped
    # the line, and the client waited forever. No SDK client can send it: raw lines.
    env = {**os.environ, "SANDBOX_POOL_SIZE": "0", "LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "omcp_py"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None

    def send(line: str) -> None:
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()

    def answer(within: float = 15) -> dict:
        ready, _, _ = select.select([proc.stdout], [], [], within)
        assert ready, "no answer"
        return json.loads(proc.stdout.readline())

    try:
        send(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-06-18",
                        "capabilities": {},
                        "clientInfo": {"name": "raw", "version": "1"},
                    },
                }
            )
        )
        assert answer()["id"] == 1
        send('{"jsonrpc": "2.0", "method": "notifications/initialized"}')
        send(
            '{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": '
            '"execute_python_code", "arguments": {"sandbox_id": "x", "code": "print(1)\\ud800"}}}'
        )
        refused = answer()
        assert refused["id"] == 2 and refused["error"]["code"] == -32602, refused
        assert "arguments.code" in refused["error"]["message"]
        assert "lone surrogate" in refused["error"]["message"]
        send(
            '{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": '
            '"list_sandboxes", "arguments": {}}}'
        )
        listed = answer()
        assert listed["id"] == 3 and listed["result"]["isError"] is False, listed
    finally:
        proc.kill()
        proc.wait(10)
