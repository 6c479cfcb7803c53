"""Where package code can connect, seen from inside the installer (issue 17).

A package served by a local index has a build backend that, while pip builds it in
the installer, tries to reach: the Docker host on a port a canary listens on, the
cloud metadata address, a public IP literal, the outside world by name, and the
same places through the egress filter it finds on pip's command line (plus the
index host on another port, and an allowed name that resolves to loopback). It
ships what happened as the package's data. Every attempt must fail; the install
itself must succeed from the index; the canary must see nothing.
"""

import functools
import http.server
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import start_server, tar_sdist, zip_wheel

from omcp_py.networks import host_address

# Runs inside the installer (pip's build subprocess), stdlib only.
EGRESS_BACKEND = r"""
import base64, hashlib, json, os, socket, zipfile

TARGETS = json.load(open(os.path.join(os.path.dirname(__file__), "targets.json")))

def _direct(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "connected"
    except OSError as exc:
        return "failed: %s" % (exc.strerror or exc)

def _resolve(name):
    try:
        return "resolved: %s" % socket.getaddrinfo(name, 443)[0][4][0]
    except OSError as exc:
        return "failed: %s" % (exc.strerror or exc)

def _proxy():
    pid = os.getppid()
    for _ in range(10):
        try:
            args = open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")
            stat = open("/proc/%d/stat" % pid).read()
        except OSError:
            return None
        for arg in args:
            if arg.startswith(b"--proxy="):
                return arg[8:].decode()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return None

def _through(proxy, request):
    host, port = proxy.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    try:
        conn = socket.create_connection((host, int(port)), timeout=5)
    except OSError as exc:
        return "no filter: %s" % exc
    with conn:
        conn.sendall(request.encode())
        conn.settimeout(20)
        data = b""
        while b"\r\n" not in data:
            chunk = conn.recv(1024)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n")[0].decode("latin-1")

def _gateway():
    for line in open("/proc/net/route").read().splitlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            return socket.inet_ntoa(bytes.fromhex(fields[2])[::-1])
    return None

def _probe():
    found = {"direct": {}, "proxy": {}}
    gateway = _gateway()
    if gateway:
        for port in (22, 80, 2375, TARGETS["canary"]):
            found["direct"]["own gateway %s:%d" % (gateway, port)] = _direct(gateway, port)
    for host, port in TARGETS["direct"]:
        found["direct"]["%s:%d" % (host, port)] = _direct(host, port)
    found["direct"]["dns pypi.org"] = _resolve("pypi.org")
    proxy = _proxy()
    found["proxy_url"] = proxy
    for target in TARGETS["connect"]:
        found["proxy"]["CONNECT " + target] = _through(
            proxy, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
    for url in TARGETS["get"]:
        found["proxy"]["GET " + url] = _through(proxy, "GET %s HTTP/1.1\r\n\r\n" % url)
    return found

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = "omcp_egress-0.1-py3-none-any.whl"
    dist = "omcp_egress-0.1.dist-info"
    files = {
        "omcp_egress.py": "RESULT = " + repr(json.dumps(_probe())) + "\n",
        dist + "/METADATA": "Metadata-Version: 2.1\nName: omcp-egress\nVersion: 0.1\n",
        dist + "/WHEEL": "Wheel-Version: 1.0\nGenerator: probe\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest())
        record.append("%s,sha256=%s,%d" % (path, digest.rstrip(b"=").decode(), len(text)))
    files[dist + "/RECORD"] = "\n".join(record + [dist + "/RECORD,,"]) + "\n"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return name
"""


def _sdist(targets: dict) -> tuple[str, bytes]:
    files = {"egress_backend.py": EGRESS_BACKEND, "targets.json": json.dumps(targets)}
    return tar_sdist("omcp-egress", "egress_backend", files)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _Canary:
    """A listener on the host that counts every connection made to it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("0.0.0.0", 0))
        self.port = self.listener.getsockname()[1]
        self.seen: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.listener.accept()
            except OSError:
                return
            self.seen.append(peer[0])
            conn.close()


@pytest.fixture
def canary() -> Iterator[_Canary]:
    found = _Canary()
    yield found
    found.listener.close()


@pytest.fixture
def loopback_port() -> Iterator[int]:
    """A port for an allowed name that resolves to loopback (nothing need listen)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.any_runtime
async def test_package_code_reaches_nothing_but_the_index(
    tmp_path: Path, docker_client: docker.DockerClient, canary: _Canary, loopback_port: int
) -> None:
    gateway = host_address(docker_client.networks.get("bridge").attrs)
    root = tmp_path / "index"
    project = root / "simple" / "omcp-egress"
    project.mkdir(parents=True)
    httpd = http.server.ThreadingHTTPServer(
        ("0.0.0.0", 0), functools.partial(_Quiet, directory=str(root))
    )
    index_port = httpd.server_address[1]
    targets = {
        "canary": canary.port,
        "direct": [
            [gateway, canary.port],
            ["169.254.169.254", 80],
            ["1.1.1.1", 443],
            [gateway, index_port],  # the index itself, but not through the filter
        ],
        "connect": [
            f"{gateway}:{canary.port}",  # the index host on another port
            "169.254.169.254:80",
            "1.1.1.1:443",
            f"localhost:{loopback_port}",  # allowed by name, resolves to loopback
            "pypi.org:443",  # not an index of this server
        ],
        "get": [f"http://{gateway}:{canary.port}/", "http://169.254.169.254/latest/meta-data/"],
    }
    name, data = _sdist(targets)
    (project / name).write_bytes(data)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    env = {
        "PACKAGE_INDEX_URL": f"http://{gateway}:{index_port}/simple/",
        "PACKAGE_ALLOWED_HOSTS": f"localhost:{loopback_port}",
    }
    try:
        async with start_server(env, cwd=tmp_path) as server:
            sid = await server.create()
            result = await server.call(
                "install_package", {"sandbox_id": sid, "package": "omcp-egress", "timeout": 180}
            )
            assert result["success"] is True, result
            shown = await server.run(sid, "import omcp_egress; print(omcp_egress.RESULT)")
            seen = json.loads(shown["output"])
            pid = server.pid
            inside = _filter_seen_from_inside(docker_client, pid)
    finally:
        httpd.shutdown()
    # The filter and its network went with the server.
    mine = {"label": f"omcp_py.owner-pid={pid}"}
    assert docker_client.networks.list(filters=mine) == []
    assert docker_client.containers.list(all=True, filters=mine) == []
    print(json.dumps(seen, indent=1))  # the note quotes these
    # The filter itself, seen from inside: uid 1000, no capability, read-only root.
    assert inside["uid"] == 1000 and inside["NoNewPrivs"] == "1", inside
    assert int(inside["CapEff"], 16) == 0 and int(inside["CapBnd"], 16) == 0, inside
    assert inside["wrote /x"] == "Read-only file system", inside
    assert seen["proxy_url"], "the probe found no filter on pip's command line"
    for target, outcome in seen["direct"].items():
        assert outcome.startswith("failed"), (target, outcome)
    for request, status in seen["proxy"].items():
        assert status.startswith("HTTP/1.1 403 Refused by the omcp_py egress filter"), (
            request,
            status,
        )
    assert canary.seen == []


_SELF = (
    "import json, os\n"
    "found = {'uid': os.getuid()}\n"
    "for line in open('/proc/self/status'):\n"
    "    key, _, value = line.partition(':')\n"
    "    if key in ('CapEff', 'CapBnd', 'NoNewPrivs'):\n"
    "        found[key] = value.strip()\n"
    "try:\n"
    "    open('/x', 'w')\n"
    "    found['wrote /x'] = True\n"
    "except OSError as exc:\n"
    "    found['wrote /x'] = exc.strerror\n"
    "print(json.dumps(found))\n"
)


def _filter_seen_from_inside(client: docker.DockerClient, pid: int) -> dict:
    labels = ["omcp_py.role=egress", f"omcp_py.owner-pid={pid}"]
    (container,) = client.containers.list(filters={"label": labels})
    code, output = container.exec_run(["python3", "-c", _SELF])
    assert code == 0, output
    return json.loads(output)


def _serve(root: Path) -> http.server.ThreadingHTTPServer:
    httpd = http.server.ThreadingHTTPServer(
        ("0.0.0.0", 0), functools.partial(_Quiet, directory=str(root))
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


@pytest.mark.any_runtime
async def test_files_on_another_host_are_refused_until_that_host_is_allowed(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    # An index whose page links to a file host of its own (as PyPI does): the filter
    # refuses that host, the error says so and names PACKAGE_ALLOWED_HOSTS; allowed,
    # the same install works.
    gateway = host_address(docker_client.networks.get("bridge").attrs)
    files_root = tmp_path / "files"
    files_root.mkdir()
    name, wheel = zip_wheel("omcp_elsewhere", "0.1", {"omcp_elsewhere.py": "VALUE = 7\n"})
    (files_root / name).write_bytes(wheel)
    files = _serve(files_root)
    file_host = f"{gateway}:{files.server_address[1]}"
    project = tmp_path / "index" / "simple" / "omcp-elsewhere"
    project.mkdir(parents=True)
    link = f"http://{file_host}/omcp_elsewhere-0.1-py3-none-any.whl"
    (project / "index.html").write_text(f'<a href="{link}">omcp_elsewhere-0.1-py3-none-any.whl</a>')
    index = _serve(tmp_path / "index")
    env = {"PACKAGE_INDEX_URL": f"http://{gateway}:{index.server_address[1]}/simple/"}
    try:
        async with start_server(env, cwd=tmp_path) as server:
            sid = await server.create()
            arguments = {"sandbox_id": sid, "package": "omcp-elsewhere", "timeout": 120}
            refused = await server.call("install_package", arguments)
        env["PACKAGE_ALLOWED_HOSTS"] = file_host
        async with start_server(env, cwd=tmp_path) as server:
            sid = await server.create()
            arguments["sandbox_id"] = sid
            allowed = await server.call("install_package", arguments)
            shown = await server.run(sid, "import omcp_elsewhere; print(omcp_elsewhere.VALUE)")
    finally:
        files.shutdown()
        index.shutdown()
    assert refused["success"] is False
    error = refused["error"]
    assert error.startswith("The egress filter refused a connection of the installer"), error
    assert f"to {file_host} (not on the allow-list)" in error, error
    assert "PACKAGE_ALLOWED_HOSTS" in error, error
    assert allowed["success"] is True, allowed
    assert shown["output"] == "7\n"


SANDBOX_REACH = r"""
import json, os, socket, urllib.request
allowed, canary = ALLOWED, CANARY
found = {"interfaces": sorted(os.listdir("/sys/class/net")), "proxy": os.environ.get("HTTPS_PROXY")}
try:
    answer = urllib.request.urlopen("http://%s/hello.txt" % allowed, timeout=20)
    found["allowed"] = answer.read().decode()
except Exception as exc:
    found["allowed"] = "failed: %s" % exc
for name, url in (("canary via proxy", "http://%s/" % canary),
                  ("metadata via proxy", "http://169.254.169.254/latest/meta-data/")):
    try:
        urllib.request.urlopen(url, timeout=20)
        found[name] = "reached"
    except urllib.error.HTTPError as exc:
        found[name] = "HTTP %d" % exc.code
    except Exception as exc:
        found[name] = "failed: %s" % exc
for name, (host, port) in (("allowed direct", allowed.rsplit(":", 1)),
                           ("canary direct", canary.rsplit(":", 1)),
                           ("metadata direct", ("169.254.169.254", "80"))):
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        found[name] = "connected"
    except OSError as exc:
        found[name] = "failed: %s" % (exc.strerror or exc)
try:
    socket.getaddrinfo("example.org", 443)
    found["dns"] = "resolved"
except OSError as exc:
    found["dns"] = "failed"
print(json.dumps(found))
"""


async def test_a_sandbox_reaches_its_allowed_host_and_nothing_else(
    tmp_path: Path, docker_client: docker.DockerClient, canary: _Canary
) -> None:
    gateway = host_address(docker_client.networks.get("bridge").attrs)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "hello.txt").write_text("hello from the allowed host")
    site = _serve(tmp_path / "site")
    allowed = f"{gateway}:{site.server_address[1]}"
    env = {"SANDBOX_ALLOWED_HOSTS": f"{allowed}, api.example.org:443"}
    gvisor = os.environ.get("SANDBOX_RUNTIME") == "runsc"
    try:
        async with start_server(env, cwd=tmp_path) as server:
            refused = await server.error("create_sandbox", {"allow_hosts": ["evil.example:443"]})
            assert "'evil.example:443' not allowed" in refused, refused
            assert f"SANDBOX_ALLOWED_HOSTS offers {allowed}, api.example.org:443" in refused
            if gvisor:
                message = await server.error("create_sandbox", {"allow_hosts": [allowed]})
                assert "SANDBOX_RUNTIME=runsc" in message, message
                return
            created = await server.call("create_sandbox", {"allow_hosts": [allowed.upper()]})
            assert created["allowed_hosts"] == [allowed], created
            plain = await server.create()
            code = SANDBOX_REACH.replace("ALLOWED", repr(allowed)).replace(
                "CANARY", repr(f"{gateway}:{canary.port}")
            )
            reach = await server.run(created["sandbox_id"], code)
            alone = await server.run(
                plain, "import os; print(sorted(os.listdir('/sys/class/net')))"
            )
            pid = server.pid
            # Removed while the server runs: its filter and its network go with it.
            sid = created["sandbox_id"]
            await server.call("remove_sandbox", {"sandbox_id": sid, "force": True})
            left = [n.name for n in docker_client.networks.list(names=[f"omcp-net-{sid}"])]
            labels = {"label": f"omcp_py.sandbox-id={sid}"}
            left += [c.name for c in docker_client.containers.list(all=True, filters=labels)]
            assert left == [], left
    finally:
        site.shutdown()
    seen = json.loads(reach["output"])
    print(json.dumps(seen, indent=1))  # the note quotes these
    assert seen["allowed"] == "hello from the allowed host", seen
    assert seen["canary via proxy"] == "HTTP 403" and seen["metadata via proxy"] == "HTTP 403"
    for name in ("allowed direct", "canary direct", "metadata direct", "dns"):
        assert seen[name].startswith("failed"), (name, seen[name])
    assert alone["output"] == "['lo']\n"  # every other sandbox: no interface but loopback
    assert canary.seen == []
    mine = {"label": f"omcp_py.owner-pid={pid}"}
    assert docker_client.networks.list(filters=mine) == []
