"""The package cache through the MCP client, against the real engine and a package
index served by this test process (its pages give each file's sha256, as PyPI's do):
the second sandbox installs from the cache; an entry tampered with on the engine is
refused and fetched again; files that package code forges in the installer never
enter the cache."""

import base64
import contextlib
import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import Server, start_server, tar_sdist, zip_wheel

from omcp_py.networks import host_address

pytestmark = pytest.mark.any_runtime  # the installer and keeper run on runc in both legs

WHEEL, WHEEL_DATA = zip_wheel("omcp_cached", "1.0", {"omcp_cached.py": "VALUE = 1\n"})
_, FORGED_WHEEL = zip_wheel("omcp_cached", "1.0", {"omcp_cached.py": "VALUE = 666\n"})

# A build backend that runs in the installer, as package code may, and forges what
# the keeper is offered: files under names the index lists, or does not, or claimed
# for a page elsewhere, and a link to a file of the installer's system.
FORGER = """
import hashlib, json, os, zipfile

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    stage = os.path.join(os.path.dirname(os.environ["TMPDIR"]), ".omcp-stage")
    claims = []
    for n, (filename, page) in enumerate(CLAIMS):
        data = b"forged %d" % n
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(stage, digest), "wb") as f:
            f.write(data)
        claims.append({"new": digest, "filename": filename, "page": page})
    os.symlink("/etc/passwd", os.path.join(stage, "0" * 64))
    claims.append({"new": "0" * 64, "filename": CLAIMS[0][0], "page": CLAIMS[0][1]})
    with open(os.path.join(stage, "records.jsonl"), "a") as f:
        f.writelines(json.dumps(claim) + "\\n" for claim in claims)
    name = "omcp_forger-0.1-py3-none-any.whl"
    dist = "omcp_forger-0.1.dist-info"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as archive:
        archive.writestr("omcp_forger.py", "FORGED = %d\\n" % len(claims))
        archive.writestr(dist + "/METADATA", "Metadata-Version: 2.1\\nName: omcp-forger\\n"
                         "Version: 0.1\\n")
        archive.writestr(dist + "/WHEEL", "Wheel-Version: 1.0\\nGenerator: t\\n"
                         "Root-Is-Purelib: true\\nTag: py3-none-any\\n")
        archive.writestr(dist + "/RECORD", "")
    return name
"""


class _Index(http.server.SimpleHTTPRequestHandler):
    fetched: list[str]

    def do_GET(self) -> None:
        self.fetched.append(self.path)
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


def _claims(url: str) -> list[tuple[str, str]]:
    return [
        (WHEEL, url + "omcp-cached/"),  # a listed name, other content
        ("omcp_unlisted-1.0-py3-none-any.whl", url + "omcp-forger/"),
        ("x-1.0.tar.gz", "http://elsewhere.example/simple/x/"),
    ]


def _sdist(claims: list[tuple[str, str]]) -> bytes:
    return tar_sdist("omcp-forger", "forger", {"forger.py": f"CLAIMS = {claims!r}\n{FORGER}"})[1]


def _project(root: Path, project: str, files: dict[str, bytes]) -> None:
    """A PEP 503 page with each file's sha256, as PyPI's pages give it."""
    folder = root / "simple" / project
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        links.append(f'<a href="{name}#sha256={hashlib.sha256(data).hexdigest()}">{name}</a>')
    (folder / "index.html").write_text("<html><body>" + "".join(links) + "</body></html>")


@pytest.fixture
def index(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[tuple[str, list[str]]]:
    """(the index's URL as installers reach it, the paths fetched from it)."""
    root = tmp_path / "index"
    root.mkdir()
    fetched: list[str] = []
    handler = type("Index", (_Index,), {"fetched": fetched})
    httpd = http.server.ThreadingHTTPServer(
        ("0.0.0.0", 0), functools.partial(handler, directory=str(root))
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    gateway = host_address(docker_client.networks.get("bridge").attrs)
    url = f"http://{gateway}:{httpd.server_address[1]}/simple/"
    _project(root, "omcp-cached", {WHEEL: WHEEL_DATA})
    _project(root, "omcp-forger", {"omcp_forger-0.1.tar.gz": _sdist(_claims(url))})
    yield url, fetched
    httpd.shutdown()


@pytest.fixture
def cache_volume(docker_client: docker.DockerClient) -> Iterator[str]:
    name = f"omcp-test-cache-{uuid.uuid4().hex[:8]}"
    yield name
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.volumes.get(name).remove(force=True)


def _in_cache(client: docker.DockerClient, volume: str, write: bytes | None = None) -> dict:
    """{entry: sha256 of its content} of the cache volume, read (or, with ``write``,
    every entry overwritten first) by root in a container of its own."""
    script = (
        "import base64, hashlib, json, os, sys\n"
        "folder = '/c/sha256'\n"
        "names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []\n"
        "data = base64.b64decode(sys.argv[1]) if len(sys.argv) > 1 else None\n"
        "for name in names:\n"
        "    if data is not None:\n"
        "        os.chmod(os.path.join(folder, name), 0o644)\n"
        "        open(os.path.join(folder, name), 'wb').write(data)\n"
        "print(json.dumps({n: hashlib.sha256(open(os.path.join(folder, n), 'rb').read())"
        ".hexdigest() for n in names}))\n"
    )
    command = ["python3", "-c", script] + ([base64.b64encode(write).decode()] if write else [])
    output = client.containers.run(
        "python:3.11-slim",
        command,
        volumes={volume: {"bind": "/c", "mode": "rw"}},
        remove=True,
        network_disabled=True,
    )
    return json.loads(output)


async def _install(server: Server, sandbox_id: str, package: str) -> dict:
    return await server.call("install_package", {"sandbox_id": sandbox_id, "package": package})


async def test_the_next_sandbox_installs_from_the_cache_and_a_tampered_entry_is_refused(
    index: tuple[str, list[str]], cache_volume: str, docker_client: docker.DockerClient
) -> None:
    url, fetched = index
    wheel_path = f"/simple/omcp-cached/{WHEEL}"
    env = {"PACKAGE_INDEX_URL": url, "PACKAGE_CACHE_VOLUME": cache_volume}
    async with start_server(env) as server:
        first = await server.create()
        result = await server.call(
            "install_package", {"sandbox_id": first, "package": "omcp-cached"}
        )
        assert result["success"] is True, result
        assert "omcp_py package cache: stored 1 file(s)" in result["output"], result["output"]
        assert fetched.count(wheel_path) == 1
        digest = hashlib.sha256(WHEEL_DATA).hexdigest()
        assert _in_cache(docker_client, cache_volume) == {digest: digest}

        second = await server.create()
        result = await _install(server, second, "omcp-cached")
        assert result["success"] is True, result
        assert f"Using {WHEEL} from the package cache (sha256 checked)" in result["output"]
        assert fetched.count(wheel_path) == 1  # not fetched again
        shown = await server.run(second, "import omcp_cached; print(omcp_cached.VALUE)")
        assert shown["output"] == "1\n", shown

        # Someone with the engine's rights changes the entry: it no longer matches its
        # name (the index's sha256), so the next install refuses it and fetches again.
        forged = _in_cache(docker_client, cache_volume, write=FORGED_WHEEL)
        assert forged == {digest: hashlib.sha256(FORGED_WHEEL).hexdigest()}
        third = await server.create()
        result = await server.call(
            "install_package", {"sandbox_id": third, "package": "omcp-cached"}
        )
        assert result["success"] is True, result
        assert f"Refused the cached {WHEEL}" in result["output"], result["output"]
        assert fetched.count(wheel_path) == 2
        shown = await server.run(third, "import omcp_cached; print(omcp_cached.VALUE)")
        assert shown["output"] == "1\n", shown
    # The keeper stored the genuine file again in place of the forged one.
    assert _in_cache(docker_client, cache_volume) == {digest: digest}


async def test_files_that_package_code_forges_never_enter_the_cache(
    index: tuple[str, list[str]], cache_volume: str, docker_client: docker.DockerClient
) -> None:
    url, _ = index
    env = {"PACKAGE_INDEX_URL": url, "PACKAGE_CACHE_VOLUME": cache_volume}
    async with start_server(env) as server:
        sid = await server.create()
        result = await _install(server, sid, "omcp-forger")
        assert result["success"] is True, result
        shown = await server.run(sid, "import omcp_forger; print(omcp_forger.FORGED)")
        assert shown["output"] == "4\n", shown  # the backend did forge four claims
        listing = await server.run(sid, "import os; print(os.listdir('/opt/omcp/packages'))")
    log = result["output"]
    assert "omcp_py package cache: stored 1 file(s); refused" in log, log
    assert f"{WHEEL}: not in the index's listing with that sha256" in log
    assert "omcp_unlisted-1.0-py3-none-any.whl: not in the index's listing" in log
    assert "x-1.0.tar.gz: not from a project page of the index" in log
    # Only the sdist the index lists, with its sha256, was stored.
    sdist = hashlib.sha256(_sdist(_claims(url))).hexdigest()
    assert _in_cache(docker_client, cache_volume) == {sdist: sdist}
    assert ".omcp-stage" not in listing["output"]  # the keeper took the stage away


def test_the_cache_is_removed_on_request(cache_volume: str, docker_client) -> None:
    docker_client.volumes.create(cache_volume)
    command = [sys.executable, "-m", "omcp_py", "cache", "clear"]
    env = {**os.environ, "PACKAGE_CACHE_VOLUME": cache_volume}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "removed the package cache" in done.stdout, done
    assert cache_volume not in [v.name for v in docker_client.volumes.list()]
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "does not exist" in again.stdout, again
