"""Shared test machinery: the real server over stdio, through the real MCP client,
against the real Docker engine (the CI script starts it)."""

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import sys
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import docker
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

IMAGE = "python:3.11-slim"
MARKER_VAR = "OMCP_TEST_MARKER"
# The socket of the engine the test run uses (DOCKER_HOST, or the default), for the
# tests that put something between a server and it, or mount it.
ENGINE_SOCKET = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://")


class ToolFailed(Exception):
    """A tool answered with isError; the text is the message the model would read."""


# The two tools answered in blocks, not structuredContent (docs/api-reference.md,
# "Result shapes"), and the fields their output blocks stand for.
_BLOCK_LABELS = {"stdout:": "output", "stderr:": "error"}


def fields(result: Any) -> dict[str, Any]:
    """A tool result as one dict: its structuredContent, or, for a run or a download
    (summary, then output blocks), the summary with each block put back in its field.

    ``result`` is a CallToolResult or the JSON-RPC result as a dict (the Inspector's).
    """
    raw = isinstance(result, dict)
    structured = result.get("structuredContent") if raw else result.structured_content
    if structured is not None:
        return structured
    blocks = result["content"] if raw else [block.model_dump() for block in result.content]
    texts = [block["text"] for block in blocks if block["type"] == "text"]
    summary = json.loads(texts[0])
    if "exit_code" in summary:
        summary.update(output="", error=None)
        labels = [text.partition("\n")[0] for text in texts[1:]]
        assert labels in ([], ["stdout:"], ["stderr:"], ["stdout:", "stderr:"]), labels
        for text in texts[1:]:
            label, _, body = text.partition("\n")
            summary[_BLOCK_LABELS[label]] = body
    else:
        assert len(texts) == (2 if summary["kind"] == "text" else 1), texts[:3]
        summary["text"] = texts[1] if summary["kind"] == "text" else None
    return summary


class Server:
    """A running omcp_py server and a client session to it."""

    def __init__(self, session: ClientSession, marker: str) -> None:
        self.session = session
        self.marker = marker

    async def call(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call a tool; its result as a dict (``fields``), or ToolFailed with the error
        text."""
        result = await self.session.call_tool(name, args or {})
        if result.is_error:
            raise ToolFailed(result.content[0].text)
        return fields(result)

    async def error(self, name: str, args: dict[str, Any] | None = None) -> str:
        """Call a tool that must fail; the error text."""
        result = await self.session.call_tool(name, args or {})
        assert result.is_error, f"{name} should have failed: {result.content}"
        return result.content[0].text

    async def create(self, **args: Any) -> str:
        return (await self.call("create_sandbox", args))["sandbox_id"]

    async def run(self, sandbox_id: str, code: str, timeout: int = 30) -> dict[str, Any]:
        return await self.call(
            "execute_python_code", {"sandbox_id": sandbox_id, "code": code, "timeout": timeout}
        )

    @property
    def pid(self) -> int:
        """The server process's pid, found by the marker in its environment."""
        return server_pid(self.marker)


def server_pid(marker: str) -> int:
    needle = f"{MARKER_VAR}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            return int(entry.name)
    raise LookupError(f"no server process with marker {marker}")


def server_params(
    env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[StdioServerParameters, str]:
    marker = uuid.uuid4().hex
    # The suite's installs share a cache of their own, never the user's.
    full_env = {
        "LOG_LEVEL": "WARNING",
        MARKER_VAR: marker,
        "PACKAGE_CACHE_VOLUME": "omcp-test-package-cache",
    }
    # The engine, and the runtime the whole suite runs under (SANDBOX_RUNTIME=runsc
    # runs it again under gVisor), come from the test run's environment.
    for name in ("DOCKER_HOST", "SANDBOX_RUNTIME"):
        if name in os.environ:
            full_env[name] = os.environ[name]
    full_env.update(env or {})
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "omcp_py"], env=full_env, cwd=cwd
    )
    return params, marker


@asynccontextmanager
async def start_server(
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    errlog: Any = None,
    handshake: str = "initialize",
    tap: list[Any] | None = None,
) -> AsyncIterator[Server]:
    """Start ``python -m omcp_py`` over stdio and open a session: the 2025-era
    ``initialize`` handshake, or the 2026-07-28 ``server/discover`` (no session). With
    ``tap``, every message from the server is also appended to it."""
    params, marker = server_params(env, cwd)
    async with (
        stdio_client(params, errlog=errlog or sys.stderr) as (read, write),
        _tapped(read, tap) as read,
        ClientSession(read, write, read_timeout_seconds=300) as session,
    ):
        await getattr(session, handshake)()
        server = Server(session, marker)
        try:
            yield server
        finally:
            with contextlib.suppress(LookupError, OSError, AssertionError):
                SERVER_PEAKS_MB.append(peak_rss_mb(server.pid))  # while it still runs


@asynccontextmanager
async def http_session(
    url: str, token: str, marker: str = "", handshake: str = "initialize"
) -> AsyncIterator[Server]:
    """A session with `omcp_py serve --http` at ``url`` (its /mcp), as the principal
    of the bearer ``token``, through the SDK's streamable-HTTP client: the 2025-era
    ``initialize`` handshake, or the 2026-07-28 ``discover`` (no session)."""
    import httpx2

    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write, read_timeout_seconds=300) as session,
    ):
        await getattr(session, handshake)()
        yield Server(session, marker)


def wait_for_http(base: str, seconds: float, alive: Any = lambda: True) -> bool:
    """True once ``base`` answers its protected-resource metadata (False: it never did,
    or ``alive()`` said the server is gone)."""
    import httpx2

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive():
        try:
            httpx2.get(f"{base}/.well-known/oauth-protected-resource/mcp", timeout=2)
            return True
        except httpx2.TransportError:
            time.sleep(0.2)
    return False


@asynccontextmanager
async def _tapped(read: Any, tap: list[Any] | None) -> AsyncIterator[Any]:
    if tap is None:
        yield read
        return
    send, received = anyio.create_memory_object_stream(100)

    async def pump() -> None:
        async with send:
            async for message in read:
                tap.append(message)
                await send.send(message)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pump)
        yield received
        tg.cancel_scope.cancel()


class Held:
    """An async context manager kept open by a task of its own, for fixtures.

    pytest-asyncio runs a fixture's setup and teardown in different tasks, while the
    MCP client's task groups must be exited by the task that entered them
    (pytest-dev/pytest-asyncio#1191): the task here enters and exits it.
    """

    def __init__(self, manager: Any) -> None:
        self._manager = manager
        self._release = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def enter(self) -> Any:
        ready: asyncio.Future = asyncio.get_running_loop().create_future()

        async def hold() -> None:
            try:
                async with self._manager as value:
                    ready.set_result(value)
                    await self._release.wait()
            except BaseException as exc:
                if ready.done():
                    raise
                ready.set_exception(exc)

        self._task = asyncio.create_task(hold())
        return await ready

    async def exit(self) -> None:
        self._release.set()
        if self._task is not None:
            await self._task


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    client = docker.from_env(version="auto")
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{IMAGE} is missing: run ../shared/docker/base-image.sh")
    return client


@pytest.fixture(scope="module")
async def shared_server(
    docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    """One default server for all the tests of a module that ask for ``server``:
    starting and stopping one cost every such test about 2.5 s (CI's time budget).
    Tests that need their own settings, or end the server, start their own."""
    held = Held(start_server(cwd=tmp_path_factory.mktemp("server")))
    yield await held.enter()
    await held.exit()


@pytest.fixture
async def server(shared_server: Server) -> AsyncIterator[Server]:
    """The module's server, empty again after each test: what a test made is removed
    (and so the server must still answer after whatever the test did to it)."""
    yield shared_server
    listed = await shared_server.call("list_sandboxes", {"include_inactive": True})
    for entry in listed["sandboxes"]:
        await shared_server.call("remove_sandbox", {"sandbox_id": entry["id"], "force": True})


@pytest.fixture
async def sandbox(server: Server) -> str:
    return await server.create()


def owned_by(client: docker.DockerClient, owner: str) -> list[dict[str, Any]]:
    """The containers of one server, as the engine lists them (raw summaries: no
    inspect per container, which a container removed meanwhile would fail)."""
    return client.api.containers(all=True, filters={"label": f"omcp_py.owner={owner}"})


def container_exists(client: docker.DockerClient, container_id: str) -> bool:
    return bool(client.api.containers(all=True, filters={"id": container_id}))


def container_of(client: docker.DockerClient, sandbox_id: str) -> Any:
    """The container behind a sandbox id (found by label, as the server does)."""
    found = client.containers.list(all=True, filters={"label": f"omcp_py.sandbox-id={sandbox_id}"})
    assert len(found) == 1, found
    return found[0]


def processes_in(container: Any, warm: bool = False) -> list[str]:
    """'pid state (name) cmdline' of every process in the container but the lister
    itself, and (unless ``warm``) the runner's warm child, waiting for the next run."""
    code = (
        "import os\n"
        "me = os.getpid()\n"
        "for p in os.listdir('/proc'):\n"
        "    if p.isdigit() and int(p) != me:\n"
        "        try:\n"
        "            stat = open(f'/proc/{p}/stat').read()\n"
        f"            if stat.split(' (', 1)[1].startswith('omcp-ready)') and not {warm}:\n"
        "                continue\n"
        "            st = stat.rsplit(')', 1)[1].split()[0]\n"
        "            name = stat.split(' ', 1)[1].rsplit(')', 1)[0] + ')'\n"
        "            cmd = open(f'/proc/{p}/cmdline', 'rb').read().replace(b'\\0', b' ')[:60]\n"
        "        except OSError:\n"
        "            continue\n"
        "        print(p, st, name, cmd.decode(errors='replace'))\n"
    )
    result = container.exec_run(["python3", "-c", code], user="0")
    return [line for line in result.output.decode().splitlines() if line.strip()]


def user_processes(container: Any) -> list[str]:
    """Processes of the code left in the container: all but PID 1 (the runner) and
    the warm child waiting for the next run."""
    return [p for p in processes_in(container) if not p.startswith("1 ")]


async def eventually(predicate: Any, timeout: float, interval: float = 0.25) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes (bounded waits only)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        await anyio.sleep(interval)
    return bool(predicate())


def process_ended(pid: int) -> bool:
    """True when the process is gone or only a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@asynccontextmanager
async def engine_proxy(path: Path):
    """A byte-level proxy to the real engine on a socket we can take away."""
    target = ENGINE_SOCKET

    async def handle(client) -> None:
        async with client:
            try:
                upstream = await anyio.connect_unix(target)
            except OSError:
                return
            async with upstream, anyio.create_task_group() as tg:

                async def pump(src, dst) -> None:
                    try:
                        async for chunk in src:
                            await dst.send(chunk)
                        await dst.send_eof()
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        tg.cancel_scope.cancel()

                tg.start_soon(pump, client, upstream)
                tg.start_soon(pump, upstream, client)

    listener = await anyio.create_unix_listener(path)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handle)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
    finally:
        # Not awaited inside the cancelled scope: a checkpoint there would raise a
        # cancellation that the scope swallows, and a failed assertion of the body
        # with it.
        with anyio.CancelScope(shield=True):
            await listener.aclose()
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def tls_index(tmp_path: Path, docker_client: Any) -> Iterator[tuple[str, Path]]:
    """A package index over HTTPS on the host with a certificate of its own, reachable
    from containers on the bridge, as an index behind an intercepting proxy looks:
    (its URL, the certificate to trust it with)."""
    import functools
    import http.server
    import ssl
    import subprocess
    import threading

    from omcp_py.networks import host_address

    address = host_address(docker_client.networks.get("bridge").attrs)
    cert, key = tmp_path / "index.pem", tmp_path / "index.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=omcp-test-index", "-addext", f"subjectAltName=IP:{address}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    cert.chmod(0o644)
    root = tmp_path / "tls-index"
    (root / "simple").mkdir(parents=True)
    (root / "simple" / "index.html").write_text("<html></html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("0.0.0.0", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"https://{address}:{httpd.server_address[1]}/simple/", cert
    finally:
        httpd.shutdown()


# -- the adversarial suite (tests/security) -----------------------------------------
# Every case attacks through the real MCP client, then checks from outside: the result,
# the time it took, what is left in the container, the server's memory, the neighbours.
# With OMCP_SECURITY_RECORD set to a file path, each case in tests/security appends
# one record to it: passed, the peak memory of its servers, and for the cases that use
# the ``case`` fixture the time from the attack's result to a clean sandbox answering
# again (bench/security_report.py runs the suite and reads them).

# A result arrives within its timeout plus this much, or the case fails.
RESULT_GRACE_S = 5.0


def peak_rss_mb(pid: int, field: str = "VmHWM") -> float:
    """The process's peak resident memory (VmHWM; or another /proc status field), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


class Case:
    """One attack on one sandbox of a running server, and what it left behind."""

    def __init__(self, server: Server, sandbox: str, docker_client: Any) -> None:
        self.server = server
        self.sandbox = sandbox
        self.docker = docker_client
        self.answered: float | None = None
        self.recovery_s: float | None = None

    async def attack(self, code: str, timeout: int = 10, sandbox: str | None = None) -> dict:
        """Run hostile code; the result must come within timeout + RESULT_GRACE_S."""
        started = time.monotonic()
        result = await self.server.run(sandbox or self.sandbox, code, timeout=timeout)
        self.answered = time.monotonic()
        took = self.answered - started
        assert took < timeout + RESULT_GRACE_S, f"the result took {took:.1f} s"
        return result

    def leftovers(self, sandbox: str | None = None) -> list[str]:
        """Processes in the sandbox but PID 1 (and the warm child waiting for code)."""
        return user_processes(container_of(self.docker, sandbox or self.sandbox))

    async def recovered(self, sandbox: str | None = None) -> None:
        """Nothing of the attack is left, and the sandbox answers a plain run again.

        The time from the attack's result to that answer is the case's recovery time.
        """
        assert await eventually(lambda: self.leftovers(sandbox) == [], 5), self.leftovers(sandbox)
        result = await self.server.run(sandbox or self.sandbox, "print('ok')")
        assert result["output"] == "ok\n", result
        if self.answered is not None:
            self.recovery_s = time.monotonic() - self.answered


@pytest.fixture
async def case(
    request: pytest.FixtureRequest, server: Server, sandbox: str, docker_client: Any
) -> AsyncIterator[Case]:
    attack = Case(server, sandbox, docker_client)
    yield attack
    request.node.omcp_recovery_s = attack.recovery_s


# Modules where nothing depends on the sandbox's runtime (pure code, documents, the
# protocol, packaging, the bundle, argument checks and the server's own lifecycle): the
# gVisor leg skips them, they ran in the first leg, and CI stays within its time
# budget. Single tests of that kind elsewhere carry @pytest.mark.any_runtime: host-side
# behaviour, or a networked installer (which runs on the engine's default runtime).
RUNTIME_INDEPENDENT = {
    "test_docs.py",
    "test_config.py",
    "test_packages.py",
    "test_hardening.py",
    "test_packaging.py",
    "test_bundle.py",
    "test_eras.py",
    "test_protocol.py",
    "test_first_run.py",  # doctor and first use; gVisor's own checks: test_runtime.py
    "test_lifecycle.py",  # reaper, signals, engine checks: the server's side
    "test_tools.py",  # schemas and the tool contract; each behaviour is run elsewhere
    "test_arguments.py",  # refused before any sandbox is touched
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("SANDBOX_RUNTIME") != "runsc":
        return
    skip = pytest.mark.skip(reason="independent of the sandbox runtime: run in the first leg")
    for item in items:
        if (
            item.path.name in RUNTIME_INDEPENDENT
            or "unit" in item.path.parts
            or item.get_closest_marker("any_runtime")
        ):
            item.add_marker(skip)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    report = yield
    setattr(item, f"omcp_{report.when}", report)
    return report


# The peak memory of every server a test started, read just before it stopped.
SERVER_PEAKS_MB: list[float] = []


@pytest.fixture(autouse=True)
def security_record(request: pytest.FixtureRequest) -> Iterator[None]:
    """One line per adversarial case for bench/security_report.py (when it asks)."""
    path = os.environ.get("OMCP_SECURITY_RECORD")
    first = len(SERVER_PEAKS_MB)
    yield
    if not path or "security" not in request.node.nodeid.split("::")[0]:
        return
    call = getattr(request.node, "omcp_call", None)
    peaks = SERVER_PEAKS_MB[first:]
    if "shared_server" in request.fixturenames:  # its peak so far: it runs on
        with contextlib.suppress(LookupError, OSError, AssertionError):
            peaks.append(peak_rss_mb(request.getfixturevalue("shared_server").pid))
    entry = {
        "case": request.node.nodeid,
        "class": Path(request.node.nodeid.split("::")[0]).stem.removeprefix("test_"),
        "passed": bool(call and call.passed),
        "duration_s": round(call.duration, 2) if call else None,
        "recovery_s": getattr(request.node, "omcp_recovery_s", None),
        "server_peak_mb": max(peaks) if peaks else None,
    }
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


# -- shipping: the repository as a user gets it ---------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def ca_bundle() -> Path | None:
    """The CA bundle builds must trust here (a TLS-intercepting proxy), if any: the
    one this test run trusts, as a user behind such a proxy would pass it."""
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def needs(program: str, how: str) -> str:
    """The path of a program a test drives; the CI script installs each of them."""
    import shutil

    found = shutil.which(program) or (
        str(Path(sys.executable).parent / program)
        if (Path(sys.executable).parent / program).exists()
        else None
    )
    if found is None:
        pytest.fail(f"{program} is needed for this test: {how}")
    return found


@pytest.fixture(scope="session")
def repo_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's files as a clone has them (tracked, or new and not ignored),
    in a directory of their own: builds and installs there touch nothing of ours."""
    import shutil
    import subprocess

    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    target = tmp_path_factory.mktemp("checkout")
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


SANDBOX_IMAGE = "omcp-py-sandbox:test"


@pytest.fixture(scope="session")
def sandbox_image(docker_client: docker.DockerClient) -> str:
    """The recommended sandbox image (numpy, pandas, matplotlib), built as a user would
    build it: `omcp_py image build`, with this machine's CA bundle."""
    import subprocess

    args = [str(Path(sys.executable).parent / "omcp_py"), "image", "build", "--tag", SANDBOX_IMAGE]
    ca = ca_bundle()
    if ca is not None:
        args += ["--ca-cert", str(ca)]
    built = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert f"set DOCKER_IMAGE={SANDBOX_IMAGE}" in built.stdout
    return SANDBOX_IMAGE


def readable_dir(path: Path) -> Path:
    """A directory the installer (uid 1000) can read when it is bind-mounted."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


def tar_sdist(name: str, backend: str, files: dict[str, str]) -> tuple[str, bytes]:
    """A minimal sdist of ``name`` 0.1 whose PEP 517 backend is the module ``backend``
    (in ``files``, with no build requirements): its file name and bytes, the same bytes
    each time (gzip mtime 0), so an index can list its sha256."""
    import gzip
    import tarfile

    module = name.replace("-", "_")
    files = {
        "pyproject.toml": f'[build-system]\nrequires = []\nbuild-backend = "{backend}"\n'
        'backend-path = ["."]\n',
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n",
        **files,
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{module}-0.1/{path}")
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return f"{module}-0.1.tar.gz", gzip.compress(buffer.getvalue(), mtime=0)


def zip_wheel(name: str, version: str, modules: dict[str, str]) -> tuple[str, bytes]:
    """A minimal pure-Python wheel (what `pip wheel` would make), built by hand."""
    dist = f"{name}-{version}.dist-info"
    files = dict(modules)
    files[f"{dist}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n"
    )
    files[f"{dist}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: omcp-test\nRoot-Is-Purelib: true\n"
    files[f"{dist}/WHEEL"] += "Tag: py3-none-any\n"
    record = []
    for path, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append(f"{path},sha256={encoded},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return f"{name}-{version}-py3-none-any.whl", buffer.getvalue()


# The tools every server offers.
TOOLS = {
    "create_sandbox",
    "list_sandboxes",
    "remove_sandbox",
    "execute_python_code",
    "install_package",
    "reset_sandbox_state",
    "upload_file",
    "download_file",
    "list_files",
}


async def serve_and_use(params: StdioServerParameters, handshake_seconds: float = 10) -> set[str]:
    """Start a server however a user would (the params), as an MCP client does: it must
    answer initialize and tools/list within ``handshake_seconds``, then run print(1) in a
    new sandbox.

    Returns:
        The names of the tools it listed.
    """
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write, read_timeout_seconds=120) as session,
    ):
        with anyio.fail_after(handshake_seconds):
            await session.initialize()
            tools = {t.name for t in (await session.list_tools()).tools}
        created = await session.call_tool("create_sandbox", {})
        assert not created.is_error, created.content
        sandbox_id = created.structured_content["sandbox_id"]
        ran = await session.call_tool(
            "execute_python_code", {"sandbox_id": sandbox_id, "code": "print(1)"}
        )
        assert fields(ran)["output"] == "1\n", ran
        removed = await session.call_tool(
            "remove_sandbox", {"sandbox_id": sandbox_id, "force": True}
        )
        assert not removed.is_error, removed.content
    return tools
