"""Attacks through output: floods, binary and invalid UTF-8, control characters, text
that looks like the protocol. Output is capped data; the server's memory stays bounded."""

from pathlib import Path

from conftest import Server, container_of, fields, peak_rss_mb


def _engine_files_of(docker_client, sandbox: str) -> int:
    """Bytes the engine keeps on the host's disk for the sandbox container's logs and
    state (its directory under the engine's root)."""
    container = container_of(docker_client, sandbox)
    root = Path(docker_client.info().get("DockerRootDir") or "/var/lib/docker")
    place = root / "containers" / container.id
    assert place.is_dir(), place  # the engine is local to the tests (CI runs it)
    return sum(f.stat().st_size for f in place.rglob("*") if f.is_file())


async def test_a_100_mb_flood_is_truncated(server: Server, sandbox: str, docker_client) -> None:
    on_disk = _engine_files_of(docker_client, sandbox)
    before = peak_rss_mb(server.pid, "VmRSS")
    result = await server.run(
        sandbox,
        "import sys\n"
        "sys.stdout.write('A' * 1000 + 'x' * 100_000_000 + 'Z' * 1000)\n"
        "sys.stderr.write('e' * 5_000_000)\n",
    )
    assert result["success"] is True and result["truncated"] is True
    output = result["output"]
    assert output.startswith("A" * 1000) and output.endswith("Z" * 1000)
    assert "of stdout left out" in output
    assert len(output) < 1024 * 1024 + 200
    assert "of stderr left out" in result["error"]
    # The server held only the capped output: its memory grew by far less than the
    # flood (a generous bound; it grows by a few MiB).
    assert peak_rss_mb(server.pid) - before < 100
    assert (await server.run(sandbox, "print('after')"))["output"] == "after\n"
    # Nothing of it landed on the host's disk: the engine writes no log of a sandbox
    # (issue 17: bounded disk).
    assert _engine_files_of(docker_client, sandbox) - on_disk < 64 * 1024


async def test_one_result_stays_under_the_size_clients_accept(server: Server, sandbox: str):
    # Claude Desktop refuses results over about 1 MiB: whatever the code prints, and
    # however it escapes as JSON, one result stays under MAX_RESULT_SIZE (1m).
    for code in (
        "print('x' * 5_000_000)",
        "import sys\nprint('o' * 5_000_000)\nsys.stderr.write('e' * 5_000_000)",
        "import sys\nsys.stdout.write('\\x01\\\\\"' * 2_000_000)",
    ):
        result = await server.session.call_tool(
            "execute_python_code", {"sandbox_id": sandbox, "code": code}
        )
        wire = len(result.model_dump_json(by_alias=True, exclude_none=True))
        assert wire <= 1024 * 1024 - 1024, (code, wire)
        structured = fields(result)
        assert structured["truncated"] is True and structured["success"] is True
        assert "Output cut to keep the result under MAX_RESULT_SIZE=1m" in structured["error"]
        assert len(structured["output"]) > 10_000  # cut, not dropped
    assert (await server.run(sandbox, "print('after')"))["output"] == "after\n"


async def test_output_that_looks_like_protocol_is_only_data(server: Server, sandbox: str) -> None:
    fake = '{"jsonrpc": "2.0", "id": 1, "result": {}}'
    result = await server.run(sandbox, f"print({fake!r})\nprint('\\x1b[31mred\\x1b[0m\\r\\x07')")
    assert result["output"].splitlines()[0] == fake
    assert "\x1b[31mred" in result["output"]
    assert (await server.call("list_sandboxes"))["count"] == 1


async def test_invalid_utf8_and_binary_output_is_replaced(server: Server, sandbox: str) -> None:
    result = await server.run(
        sandbox, "import os, sys\nos.write(1, b'ok \\xff\\xfe\\x00 end')\nos.write(2, b'\\xc3')"
    )
    assert result["output"] == "ok \ufffd\ufffd\x00 end"
    assert result["error"] == "\ufffd"
    assert (await server.run(sandbox, "print('still fine')"))["output"] == "still fine\n"


async def test_ansi_escapes_and_control_characters_are_only_data(
    server: Server, sandbox: str
) -> None:
    nasty = "\\x1b[2J\\x1b[31mred\\x1b[0m\\x07\\x08\\x00\\r\\x1b]0;title\\x07\\u2028\\u2029end"
    result = await server.run(sandbox, f"import sys; sys.stdout.write('{nasty}')")
    expected = "\x1b[2J\x1b[31mred\x1b[0m\x07\x08\x00\r\x1b]0;title\x07\u2028\u2029end"
    assert result["output"] == expected
    assert (await server.run(sandbox, "print('next')"))["output"] == "next\n"
