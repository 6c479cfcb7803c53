"""The file tools against hostile paths: every way out of the sandbox's files is refused
with a clear error, nothing outside is read or written, and nothing hangs. What is
planted (links, FIFOs, sockets) is made by code in the sandbox, as an attacker would."""

import base64

import anyio
from conftest import Server

PLANT = """
import os, socket
os.symlink('/etc/passwd', 'link_out')
os.symlink('/etc', 'dir_link')
os.symlink('/dev/zero', 'dev_link')
os.symlink('/tmp', 'tmp_dir_link')
os.symlink('/etc/passwd', '/tmp/tmp_link')
open('target.txt', 'w').write('original')
os.symlink('/sandbox/target.txt', 'inner_link')
os.mkfifo('fifo')
socket.socket(socket.AF_UNIX).bind('sock')
os.mkdir('sub')
open('plain.txt', 'w').write('plain')
"""

# (path, what the error must say), for every tool.
REFUSED_EVERYWHERE = [
    ("../etc/passwd", "goes up with '..', which is not allowed"),
    ("sub/../../etc/passwd", "goes up with '..'"),
    ("/sandbox/../etc/passwd", "goes up with '..'"),
    ("/etc/passwd", "/etc/passwd is outside the sandbox's files"),
    ("/proc/1/environ", "is outside the sandbox's files"),
    ("/proc/self/root/etc/passwd", "is outside the sandbox's files"),
    ("/dev/zero", "is outside the sandbox's files"),
    ("/home/sandbox/.bashrc", "is outside the sandbox's files"),
    ("/sandboxes/x", "is outside the sandbox's files"),
    ("dir_link/passwd", "/sandbox/dir_link is a symbolic link (to /etc)"),
    ("tmp_dir_link/x", "/sandbox/tmp_dir_link is a symbolic link (to /tmp)"),
    ("a\x00b", "NUL byte"),
    ("   ", "path is empty"),
]
REFUSED_FILES = [
    ("link_out", "/sandbox/link_out is a symbolic link (to /etc/passwd)"),
    ("dev_link", "/sandbox/dev_link is a symbolic link (to /dev/zero)"),
    ("/tmp/tmp_link", "/tmp/tmp_link is a symbolic link (to /etc/passwd)"),
    ("inner_link", "/sandbox/inner_link is a symbolic link (to /sandbox/target.txt)"),
    ("fifo", "/sandbox/fifo is a FIFO, not a regular file"),
    ("sock", "/sandbox/sock is a socket, not a regular file"),
    ("sub", "/sandbox/sub is a directory"),
    (".", "/sandbox is a directory"),
    ("/tmp", "/tmp is a directory"),
    ("plain.txt/x", "/sandbox/plain.txt is not a directory"),
]


async def planted(server: Server, sandbox: str) -> None:
    result = await server.run(sandbox, PLANT)
    assert result["success"], result


async def test_downloads_refuse_every_way_out(server: Server, sandbox: str) -> None:
    await planted(server, sandbox)
    for path, said in REFUSED_EVERYWHERE + REFUSED_FILES:
        with anyio.fail_after(10):  # a FIFO or a device must not block the read
            message = await server.error("download_file", {"sandbox_id": sandbox, "path": path})
        assert said in message, (path, message)
    assert "does not exist" in await server.error(
        "download_file", {"sandbox_id": sandbox, "path": "nothing/here"}
    )
    got = await server.call("download_file", {"sandbox_id": sandbox, "path": "plain.txt"})
    assert got["text"] == "plain"


async def test_uploads_refuse_every_way_out_and_write_nothing(server: Server, sandbox: str):
    await planted(server, sandbox)
    before = await server.call("list_files", {"sandbox_id": sandbox})
    payload = base64.b64encode(b"written by the upload").decode()
    for path, said in REFUSED_EVERYWHERE + REFUSED_FILES:
        with anyio.fail_after(10):
            message = await server.error(
                "upload_file", {"sandbox_id": sandbox, "path": path, "content_base64": payload}
            )
        assert said in message, (path, message)
    # Nothing was written anywhere: not through the links, not in /sandbox or /tmp.
    after = await server.call("list_files", {"sandbox_id": sandbox})
    assert after["entries"] == before["entries"]
    check = await server.run(
        sandbox,
        "import os\n"
        "print(open('target.txt').read(), sorted(os.listdir('/tmp')))\n"
        "print(os.path.exists('/etc/x'), os.path.exists('/home/sandbox/.bashrc'))\n",
    )
    assert check["output"] == "original ['tmp_link']\nFalse False\n", check


async def test_uploads_land_as_the_code_user(server: Server, sandbox: str) -> None:
    await server.call("upload_file", {"sandbox_id": sandbox, "path": "deep/a/b.txt", "text": "x"})
    await server.call("upload_file", {"sandbox_id": sandbox, "path": "/tmp/t.txt", "text": "y"})
    owners = await server.run(
        sandbox,
        "import os\n"
        "print([(os.stat(p).st_uid, oct(os.stat(p).st_mode & 0o777)) for p in "
        "('deep', 'deep/a', 'deep/a/b.txt', '/tmp/t.txt')], os.getuid())\n",
    )
    uid = owners["output"].split()[-1]
    assert owners["output"].startswith(
        f"[({uid}, '0o755'), ({uid}, '0o755'), ({uid}, '0o644'), ({uid}, '0o644')]"
    ), owners
    assert uid != "0"


async def test_listing_refuses_every_way_out(server: Server, sandbox: str) -> None:
    await planted(server, sandbox)
    not_directories = [
        ("link_out", "is a symbolic link"),
        ("fifo", "/sandbox/fifo is not a directory"),
        ("plain.txt", "download_file reads a file"),
    ]
    for path, said in [*REFUSED_EVERYWHERE, *not_directories]:
        with anyio.fail_after(10):
            message = await server.error("list_files", {"sandbox_id": sandbox, "path": path})
        assert said in message, (path, message)
    listed = await server.call("list_files", {"sandbox_id": sandbox})
    kinds = {e["path"]: (e["type"], e["target"]) for e in listed["entries"]}
    assert kinds["link_out"] == ("symlink", "/etc/passwd")
    assert kinds["fifo"] == ("fifo", None) and kinds["sock"] == ("socket", None)
    assert kinds["sub"] == ("directory", None)
    assert not any(p.startswith(("dir_link/", "tmp_dir_link/")) for p in kinds)
    # And the sandbox runs code as before.
    assert (await server.run(sandbox, "print('ok')"))["output"] == "ok\n"
