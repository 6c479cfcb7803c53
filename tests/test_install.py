"""install_package: real installs through the MCP client, against the real engine.

Packages come from the real index (through the host's CA bundle, as behind any
TLS-intercepting proxy), from a wheelhouse built here, or from a small index
served by this test process, which also serves a package whose build reports, from
inside the installer, how that installer is confined.
"""

import ast
import base64
import functools
import hashlib
import http.server
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import docker
import pytest
from conftest import Server, eventually, readable_dir, start_server, tar_sdist, zip_wheel

from omcp_py.networks import host_address

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
ROLE_INSTALLER = "omcp_py.role=installer"


# -- packages made here ---------------------------------------------------------------


# A PEP 517 backend with no build requirements: pip runs it inside the installer,
# where it records what it can see and do, and ships that as the package's data.
PROBE_BACKEND = """
import base64, hashlib, json, os, socket, zipfile

def _probe():
    found = {"uid": os.getuid(), "gid": os.getgid(), "environ": dict(os.environ)}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs"):
            found[key] = value.strip()
    for path in ("/probe", "/usr/lib/probe"):
        try:
            open(path, "w").close()
            found["wrote " + path] = True
        except OSError as exc:
            found["wrote " + path] = exc.strerror
    found["docker socket"] = os.path.exists("/var/run/docker.sock")
    return found

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = "omcp_probe-0.1-py3-none-any.whl"
    dist = "omcp_probe-0.1.dist-info"
    files = {
        "omcp_probe.py": "RESULT = " + repr(json.dumps(_probe())) + "\\n",
        dist + "/METADATA": "Metadata-Version: 2.1\\nName: omcp-probe\\nVersion: 0.1\\n",
        dist + "/WHEEL": "Wheel-Version: 1.0\\nGenerator: probe\\nRoot-Is-Purelib: true\\n"
        "Tag: py3-none-any\\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest())
        record.append("%s,sha256=%s,%d" % (path, digest.rstrip(b"=").decode(), len(text)))
    files[dist + "/RECORD"] = "\\n".join(record + [dist + "/RECORD,,"]) + "\\n"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return name
"""


def _probe_sdist() -> tuple[str, bytes]:
    return tar_sdist("omcp-probe", "probe_backend", {"probe_backend.py": PROBE_BACKEND})


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    house = readable_dir(tmp_path / "wheelhouse")
    for version, value in (("0.1.0", 41), ("0.2.0", 42)):
        name, data = zip_wheel("omcp_demo", version, {"omcp_demo.py": f"VALUE = {value}\n"})
        (house / name).write_bytes(data)
        (house / name).chmod(0o644)
    return house


def _gateway(client: docker.DockerClient, network: str = "bridge") -> str:
    """The host's address as containers on ``network`` reach it."""
    return host_address(client.networks.get(network).attrs)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_index(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[str]:
    """A PEP 503 index (directory listings) on the host, reachable from the installer."""
    root = tmp_path / "index"
    project = root / "simple" / "omcp-probe"
    project.mkdir(parents=True)
    name, data = _probe_sdist()
    (project / name).write_bytes(data)
    handler = functools.partial(_Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("0.0.0.0", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://{_gateway(docker_client)}:{httpd.server_address[1]}/simple/"
    httpd.shutdown()


@pytest.fixture
def stalled_index(docker_client: docker.DockerClient) -> Iterator[str]:
    """An index that accepts connections and never answers: installs cannot finish."""
    listener = socket.create_server(("0.0.0.0", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://{_gateway(docker_client)}:{listener.getsockname()[1]}/simple/"
    listener.close()
    for conn in held:
        conn.close()


def _installers(client: docker.DockerClient) -> list:
    # Low-level list: no inspect per container, so one being removed is no error.
    return client.api.containers(all=True, filters={"label": ROLE_INSTALLER})


def _volumes(client: docker.DockerClient, sandbox_id: str) -> list[str]:
    found = client.volumes.list(filters={"label": f"omcp_py.sandbox-id={sandbox_id}"})
    return [v.name for v in found]


async def _install(server: Server, sandbox_id: str, package: str, timeout: int = 120) -> dict:
    return await server.call(
        "install_package", {"sandbox_id": sandbox_id, "package": package, "timeout": timeout}
    )


# -- the real index --------------------------------------------------------------------


@pytest.mark.any_runtime
@pytest.mark.skipif(not Path(CA_BUNDLE).exists(), reason="needs the host's CA bundle")
async def test_real_index_pure_and_compiled_wheels(tmp_path: Path) -> None:
    async with start_server({"PACKAGE_CA_BUNDLE": CA_BUNDLE}, cwd=tmp_path) as server:
        sid = await server.create()
        result = await _install(server, sid, "six markupsafe")
        assert result["success"] is True, result
        assert result["error"] is None and result["exit_code"] == 0
        assert result["requested"] == ["six", "markupsafe"]
        names = {item.split("==")[0].lower() for item in result["installed"]}
        assert names == {"six", "markupsafe"}, result["installed"]
        assert "Successfully installed" in result["output"]

        # The compiled extension loads (the volume is not noexec); both import from it.
        check = await server.run(
            sid,
            "import sys, markupsafe, six\n"
            "speedups = sys.modules['markupsafe._speedups']\n"
            "print(speedups.__file__.endswith('.so'), six.__file__.startswith('/opt/omcp/'))\n"
            "print(markupsafe.escape('<a>'))",
        )
        assert check["output"] == "True True\n&lt;a&gt;\n", check

        # The sandbox is still offline and cannot write to its packages.
        probe = await server.run(
            sid,
            "import socket, os\n"
            "print(sorted(line.split(':')[0].strip() for line in open('/proc/net/dev')"
            ".readlines()[2:]))\n"
            "try:\n"
            "    socket.create_connection(('151.101.0.223', 443), timeout=3)\n"
            "    print('connected')\n"
            "except OSError as e:\n"
            "    print('refused', e.errno)\n"
            "try:\n"
            "    open('/opt/omcp/packages/six.py', 'a')\n"
            "except OSError as e:\n"
            "    print(e.strerror)\n",
        )
        lines = probe["output"].splitlines()
        assert lines[0] == "['lo']" and lines[1].startswith("refused"), probe
        assert lines[2] == "Read-only file system", probe

        # Asking again is harmless; a pinned older version replaces the newer one.
        again = await _install(server, sid, "six==1.15.0")
        assert again["success"] is True and "six==1.15.0" in again["installed"], again
        assert sum(item.lower().startswith("six==") for item in again["installed"]) == 1
        version = await server.run(sid, "import six; print(six.__version__)")
        assert version["output"] == "1.15.0\n"

        conflict = await _install(server, sid, "six==1.16.0 six==1.15.0")
        assert conflict["success"] is False
        assert conflict["error"].startswith("Version conflict"), conflict["error"]
        assert "six==1.16.0" in conflict["error"] and len(conflict["error"]) < 400

        unknown = await _install(server, sid, "omcp-no-such-package-2f9a1c")
        assert unknown["success"] is False
        assert "No release matches omcp-no-such-package-2f9a1c" in unknown["error"]


# -- offline and local -----------------------------------------------------------------


async def test_wheelhouse_installs_with_no_index(
    wheelhouse: Path, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    env = {"PACKAGE_WHEELHOUSE": str(wheelhouse)}
    async with start_server(env, cwd=tmp_path) as server:
        first, second = await server.create(), await server.create()
        result = await _install(server, first, "omcp-demo")
        assert result["success"] is True and result["installed"] == ["omcp-demo==0.2.0"], result
        assert (await server.run(first, "import omcp_demo; print(omcp_demo.VALUE)"))[
            "output"
        ] == "42\n"
        # Both the runner and a python the code starts put it where python puts a user
        # site: the first site directory, so the image's own packages come after it.
        sites = "[p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))]"
        child_code = f"import omcp_demo, sys; print(omcp_demo.__file__); print({sites})"
        child = await server.run(
            first,
            f"import subprocess, sys\nprint({sites})\n"
            f"subprocess.run([sys.executable, '-c', {child_code!r}], check=True)\n",
        )
        in_runner, where, in_child = child["output"].splitlines()
        user_site = where.rsplit("/", 1)[0]
        assert user_site.startswith("/opt/omcp/packages/lib/python3"), child
        assert ast.literal_eval(in_runner)[0] == user_site, in_runner
        assert ast.literal_eval(in_child)[0] == user_site, in_child
        # Installs go to one sandbox only.
        other = await server.run(second, "import omcp_demo")
        assert other["success"] is False and "ModuleNotFoundError" in other["error"]

        older = await _install(server, first, "omcp-demo==0.1.0")
        assert older["installed"] == ["omcp-demo==0.1.0"], older
        # A new process sees the new files (stateless runs start fresh).
        assert (await server.run(first, "import omcp_demo; print(omcp_demo.VALUE)"))[
            "output"
        ] == "41\n"

        missing = await _install(server, first, "six")
        assert missing["success"] is False
        assert "No release matches six in the wheelhouse" in missing["error"], missing["error"]
        assert not _installers(docker_client)


async def test_installer_is_confined_seen_from_inside(
    local_index: str, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    canary = "omcp-canary-" + hashlib.sha256(str(time.time()).encode()).hexdigest()[:16]
    env = {"PACKAGE_INDEX_URL": local_index, "OMCP_TEST_SECRET": canary}
    async with start_server(env, cwd=tmp_path) as server:
        sid = await server.create()
        result = await _install(server, sid, "omcp-probe")
        assert result["success"] is True, result
        assert canary not in json.dumps(result)
        shown = await server.run(sid, "import omcp_probe; print(omcp_probe.RESULT)")
        assert shown["success"] is True, shown
        seen = json.loads(shown["output"])
    assert (seen["uid"], seen["gid"]) == (1000, 1000)
    assert int(seen["CapEff"], 16) == 0 and int(seen["CapPrm"], 16) == 0
    assert int(seen["CapBnd"], 16) == 0
    assert seen["NoNewPrivs"] == "1"
    assert seen["wrote /probe"] == "Read-only file system"
    assert seen["wrote /usr/lib/probe"] == "Read-only file system"
    assert seen["docker socket"] is False
    assert canary not in json.dumps(seen["environ"])
    assert not _installers(docker_client)


_LISTING = (
    "import os\n"
    "found = []\n"
    "for root, dirs, files in os.walk('/opt/omcp/packages'):\n"
    "    for name in files:\n"
    "        path = os.path.join(root, name)\n"
    "        found.append((path, os.path.getsize(path)))\n"
    "print(sorted(found))\n"
)


async def test_an_install_past_the_disk_limit_is_undone(
    wheelhouse: Path, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    # 24 MiB of incompressible text in one module: past a 16 MiB PACKAGES_DISK_LIMIT.
    data = base64.b64encode(os.urandom(18 * 2**20)).decode()
    name, wheel = zip_wheel("omcp_big", "1.0", {"omcp_big.py": f"DATA = {data!r}\n"})
    (wheelhouse / name).write_bytes(wheel)
    (wheelhouse / name).chmod(0o644)
    env = {"PACKAGE_WHEELHOUSE": str(wheelhouse), "PACKAGES_DISK_LIMIT": "16m"}
    async with start_server(env, cwd=tmp_path) as server:
        sid = await server.create()
        small = await _install(server, sid, "omcp-demo==0.1.0")
        assert small["success"] is True, small
        before = (await server.run(sid, _LISTING))["output"]
        big = await _install(server, sid, "omcp-big omcp-demo==0.2.0")
        after = (await server.run(sid, _LISTING))["output"]
        value = await server.run(sid, "import omcp_demo; print(omcp_demo.VALUE)")
        gone = await server.run(sid, "import omcp_big")
    assert big["success"] is False, big
    assert "over PACKAGES_DISK_LIMIT=16m" in big["error"], big["error"]
    assert "what it wrote was removed" in big["error"]
    assert after == before  # the earlier install as it was: same files, same sizes
    assert value["output"] == "41\n"
    assert "ModuleNotFoundError" in gone["error"]


# -- refusals, timeouts, concurrency, lifecycle ------------------------------------------

REFUSED = [
    ("x; rm -rf /", "'x;'"),
    ("--index-url http://example.invalid x", "'--index-url'"),
    ("-r /etc/passwd", "'-r'"),
    ("'''", "\"'''\""),
    ("git+https://github.com/psf/requests", "'git+https://github.com/psf/requests'"),
    ("x.whl", "'x.whl' names a file"),  # pip would install it from a path
    ("setup.py", "'setup.py' names a file"),
    ("", "package is empty"),
    ("six " * 10_000, "10,000 requirements"),
]


@pytest.mark.any_runtime
async def test_refused_inputs_never_start_an_installer(
    server: Server, sandbox: str, docker_client: docker.DockerClient
) -> None:
    since = int(time.time()) - 1
    for package, named in REFUSED:
        message = await server.error("install_package", {"sandbox_id": sandbox, "package": package})
        assert named in message, (package[:40], message)
        assert "Traceback" not in message
    until = int(time.time()) + 1
    events = docker_client.events(
        since=since,
        until=until,
        # This sandbox's: a container of the test before may end within that second.
        filters={"type": "container", "label": f"omcp_py.sandbox-id={sandbox}"},
        decode=True,
    )
    roles = [e.get("Actor", {}).get("Attributes", {}).get("omcp_py.role") for e in events]
    assert "installer" not in roles, roles
    assert (await server.run(sandbox, "print(1)"))["output"] == "1\n"


async def test_timeout_stops_the_installer_and_spares_the_sandbox(
    stalled_index: str, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    async with start_server({"PACKAGE_INDEX_URL": stalled_index}, cwd=tmp_path) as server:
        sid = await server.create()
        result = await _install(server, sid, "six", timeout=1)
        assert result["success"] is False and result["timed_out"] is True, result
        assert "did not finish within 1 s" in result["error"]
        assert result["exit_code"] != 0
        assert not _installers(docker_client)
        assert (await server.run(sid, "print(1)"))["output"] == "1\n"


async def test_an_install_blocks_no_other_tool_or_sandbox(
    stalled_index: str, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    env = {"PACKAGE_INDEX_URL": stalled_index, "MAX_SANDBOXES": "2"}
    async with start_server(env, cwd=tmp_path) as server:
        installing = await server.create()
        outcome: dict = {}

        async def install() -> None:
            result = await server.session.call_tool(
                "install_package",
                {"sandbox_id": installing, "package": "six", "timeout": 120},
            )
            outcome["result"] = result

        async with anyio.create_task_group() as tg:
            tg.start_soon(install)
            assert await eventually(lambda: bool(_installers(docker_client)), 30)
            # While pip waits on the index: the same sandbox runs code, another one is
            # created (the installer does not count against MAX_SANDBOXES) and runs code.
            assert (await server.run(installing, "print('same')"))["output"] == "same\n"
            other = await server.create()
            assert (await server.run(other, "print('other')"))["output"] == "other\n"
            listed = await server.call("list_sandboxes")
            assert listed["count"] == 2
            assert {s["id"]: s["status"] for s in listed["sandboxes"]}[installing] == "busy"
            assert "result" not in outcome  # all of that happened during the install
            # Removing the sandbox stops its install and takes its volume along.
            await server.call("remove_sandbox", {"sandbox_id": installing, "force": True})
        result = outcome["result"]
        assert result.is_error and "was removed during the install" in result.content[0].text
        assert not _installers(docker_client)
        assert _volumes(docker_client, installing) == []
        assert (await server.run(other, "print(2)"))["output"] == "2\n"


@pytest.mark.any_runtime
async def test_package_volumes_follow_their_sandbox(
    wheelhouse: Path, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    env = {"PACKAGE_WHEELHOUSE": str(wheelhouse), "REAPER_INTERVAL": "1"}
    async with start_server(env, cwd=tmp_path) as server:
        kept = await server.create()
        removed = await server.create()
        for sid in (kept, removed):
            assert (await _install(server, sid, "omcp-demo"))["success"] is True
            assert len(_volumes(docker_client, sid)) == 1
        expiring = await server.create(timeout=3)
        assert (await _install(server, expiring, "omcp-demo"))["success"] is True
        await server.call("remove_sandbox", {"sandbox_id": removed, "force": True})
        assert _volumes(docker_client, removed) == []
        # Idle expiry removes the volume too.
        assert await eventually(lambda: _volumes(docker_client, expiring) == [], 30)
        assert (await server.run(kept, "import omcp_demo; print('ok')"))["output"] == "ok\n"
        # A sandbox removed behind the server's back leaves no volume for long.
        outside = await server.create()
        docker_client.containers.get(f"omcp-{outside}").remove(force=True)
        assert await eventually(lambda: _volumes(docker_client, outside) == [], 30)
        mine = {"label": f"omcp_py.owner-pid={server.pid}"}
    # Shutdown removes what is left.
    assert _volumes(docker_client, kept) == []
    assert not docker_client.volumes.list(filters=mine)


@pytest.mark.any_runtime
async def test_an_unreachable_index_is_named(tmp_path: Path) -> None:
    # Inside the installer 127.0.0.1 is the installer itself: nothing listens there.
    index = "http://127.0.0.1:9/simple/"
    async with start_server({"PACKAGE_INDEX_URL": index}, cwd=tmp_path) as server:
        sid = await server.create()
        result = await _install(server, sid, "six")
        assert result["success"] is False and result["timed_out"] is False
        assert result["error"].startswith(f"The package index {index} could not be reached")
        # pip says only "from versions: none"; the egress filter's log says why.
        assert "Connection refused" in result["error"], result["error"]


@pytest.mark.any_runtime
async def test_a_long_install_reports_progress_and_stops_when_cancelled(
    stalled_index: str, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    notes: list[tuple[float, float | None, str | None]] = []
    scope = anyio.CancelScope()

    async def progress(done: float, total: float | None, message: str | None) -> None:
        notes.append((done, total, message))
        if len(notes) == 2:
            scope.cancel()  # the client gives up: it sends notifications/cancelled

    async with start_server({"PACKAGE_INDEX_URL": stalled_index}, cwd=tmp_path) as server:
        sid = await server.create()
        with anyio.fail_after(60), scope:
            await server.session.call_tool(
                "install_package",
                {"sandbox_id": sid, "package": "six", "timeout": 120},
                progress_callback=progress,
            )
            raise AssertionError("the install ended by itself")
        cancelled = time.monotonic()
        values = [done for done, _, _ in notes]
        assert len(values) >= 2 and values == sorted(set(values)), notes
        assert all(total == 120 and "installing for" in str(m) for _, total, m in notes), notes
        # The installer container goes at once, and the sandbox takes a new install.
        assert await eventually(lambda: not _installers(docker_client), 5)
        gone = time.monotonic() - cancelled
        assert (await server.run(sid, "print(1)"))["output"] == "1\n"
        again = await _install(server, sid, "six", timeout=2)
        assert again["timed_out"] is True  # it ran: the cancelled one holds no lock
        print(f"install: progress at {values}; installer gone {gone:.2f} s after the cancel")
