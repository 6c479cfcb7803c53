"""import_host_file / export_file through the real client and engine (issue 18 item 2):
a 5 MiB file in and out byte for byte, every way out refused, nothing written outside
the output directory, and no tool offered while its setting is unset."""

import hashlib
import os
from pathlib import Path

import pytest
from conftest import ToolFailed, start_server


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    inputs, outputs, outside = tmp_path / "in", tmp_path / "out", tmp_path / "outside"
    for directory in (inputs, outputs, outside):
        directory.mkdir()
    (outside / "secret.txt").write_text("the user's secret\n")
    (inputs / "data.bin").write_bytes(os.urandom(5 * 2**20))
    (inputs / "nested").mkdir()
    (inputs / "nested" / "small.csv").write_text("a,b\n1,2\n")
    (inputs / "leak.txt").symlink_to(outside / "secret.txt")
    (inputs / "linked_dir").symlink_to(outside, target_is_directory=True)
    os.mkfifo(inputs / "pipe")
    return {"in": inputs, "out": outputs, "outside": outside, "root": tmp_path}


async def test_files_go_in_and_out_byte_for_byte_and_nothing_leaves(
    host: dict[str, Path],
) -> None:
    env = {"HOST_INPUT_DIRS": str(host["in"]), "HOST_OUTPUT_DIR": str(host["out"])}
    original = (host["in"] / "data.bin").read_bytes()
    outside_before = _tree(host["outside"])
    async with start_server(env, cwd=host["root"]) as server:
        sid = await server.create()
        imported = await server.call(
            "import_host_file",
            {"sandbox_id": sid, "host_path": str(host["in"] / "data.bin"), "path": "data.bin"},
        )
        assert imported["size"] == len(original) and imported["path"] == "/sandbox/data.bin"
        assert imported["sha256"] == hashlib.sha256(original).hexdigest()
        assert imported["host_path"] == str(host["in"] / "data.bin")
        seen = await server.run(
            sid, "import hashlib; print(hashlib.sha256(open('data.bin','rb').read()).hexdigest())"
        )
        assert seen["output"].strip() == hashlib.sha256(original).hexdigest()
        relative = await server.call(
            "import_host_file",
            {"sandbox_id": sid, "host_path": "nested/small.csv", "path": "s.csv"},
        )
        assert relative["size"] == 8

        first = await server.session.call_tool(
            "export_file", {"sandbox_id": sid, "path": "data.bin"}
        )
        assert not first.is_error, first.content
        link = first.content[1]
        assert link.type == "resource_link" and link.uri == (host["out"] / "data.bin").as_uri()
        assert link.size == len(original)
        assert first.structured_content["host_path"] == str(host["out"] / "data.bin")
        again = await server.call("export_file", {"sandbox_id": sid, "path": "data.bin"})
        assert again["host_path"] == str(host["out"] / "data (1).bin")  # never overwritten
        named = await server.call(
            "export_file", {"sandbox_id": sid, "path": "s.csv", "name": "table.csv"}
        )
        assert named["host_path"] == str(host["out"] / "table.csv")

        refused_in = {
            "../outside/secret.txt": "may not contain '..'",
            str(host["in"] / ".." / "outside" / "secret.txt"): "may not contain '..'",
            "/etc/passwd": f"is outside the input directories. HOST_INPUT_DIRS allows {host['in']}",
            "leak.txt": "is a symbolic link, which is not followed",
            "linked_dir/secret.txt": "is a symbolic link, which is not followed",
            "pipe": "is not a regular file",
            "nested": "is not a regular file",
            "missing.txt": "does not exist",
        }
        for host_path, said in refused_in.items():
            message = await server.error(
                "import_host_file", {"sandbox_id": sid, "host_path": host_path, "path": "x"}
            )
            assert said in message, (host_path, message)
            assert "Traceback" not in message
        for name in ("../escape.txt", "sub/dir.txt", "..", ".", "/etc/cron.d/x"):
            message = await server.error(
                "export_file", {"sandbox_id": sid, "path": "s.csv", "name": name}
            )
            assert "must be a plain file name" in message, (name, message)
        # Names a sandbox made, passed on by the model as list_files shows them: safe
        # names in the user's folder, a numbered copy of a long one, no error.
        await server.run(
            sid,
            "import os\nos.mkdir('hostile')\n"
            "for n in ['a\\nb\\x1b[31m.txt', '\\u202eevil.txt', 'y' * 250 + '.csv']:\n"
            "    open('hostile/' + n, 'w').write('h')\n",
        )
        listed = await server.call("list_files", {"sandbox_id": sid, "path": "hostile"})
        exported = []
        for entry in listed["entries"]:
            for _ in range(2):
                where = "hostile/" + entry["path"]  # listed relative to the directory
                done = await server.call("export_file", {"sandbox_id": sid, "path": where})
                exported.append(Path(done["host_path"]).name)
        assert {"a_b_[31m.txt", "a_b_[31m (1).txt", "_evil.txt", "_evil (1).txt"} < set(exported)
        assert sum(name.startswith("yyyy") and name.endswith(".csv") for name in exported) == 2
        for name in exported:
            (host["out"] / name).unlink()
        assert (await server.run(sid, "print('still here')"))["output"] == "still here\n"

    assert (host["out"] / "data.bin").read_bytes() == original
    assert (host["out"] / "data (1).bin").read_bytes() == original
    assert (host["out"] / "table.csv").read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in host["out"].iterdir()) == [
        "data (1).bin",
        "data.bin",
        "table.csv",
    ]
    assert _tree(host["outside"]) == outside_before
    assert sorted(p.name for p in host["root"].iterdir()) == ["in", "out", "outside"]


@pytest.mark.any_runtime
async def test_the_tools_exist_only_with_their_settings(tmp_path: Path) -> None:
    async with start_server({}, cwd=tmp_path) as server:
        names = {tool.name for tool in (await server.session.list_tools()).tools}
        assert not names & {"import_host_file", "export_file"}
        with pytest.raises(ToolFailed):
            await server.call("export_file", {"sandbox_id": "x", "path": "y"})
    async with start_server({"HOST_OUTPUT_DIR": str(tmp_path)}, cwd=tmp_path) as server:
        names = {tool.name for tool in (await server.session.list_tools()).tools}
        assert "export_file" in names and "import_host_file" not in names
