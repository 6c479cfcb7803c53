"""Engines besides the local one, started by the tests as a user would run them: a
second ``dockerd`` on loopback with its own data root, serving TLS with certificates
made here (the docker CLI's conventions: ca.pem, cert.pem, key.pem), an sshd that
reaches it (``ssh://``), and Podman's Docker-compatible service."""

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(where: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as
    `dockerd --tlsverify` and DOCKER_CERT_PATH expect them."""
    where.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=omcp test CA", "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=where)  # fmt: skip
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        names = "subjectAltName=IP:127.0.0.1\n" if name == "server" else ""
        (where / f"{name}.ext").write_text(f"extendedKeyUsage={usage}\n{names}")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", cwd=where)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                 "-out", f"{name}-cert.pem", cwd=where)  # fmt: skip
    client = where / "client"
    client.mkdir(exist_ok=True)
    shutil.copy(where / "ca.pem", client / "ca.pem")
    shutil.copy(where / "client-cert.pem", client / "cert.pem")
    shutil.copy(where / "client-key.pem", client / "key.pem")
    return client


def _wait(what: str, ready, process: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} ended: {log.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not start in {seconds} s: {log.read_text()[-3000:]}")


def _answers(sock: Path) -> bool:
    """Whether the engine on that socket answers `docker version`."""
    version = ["docker", "-H", f"unix://{sock}", "version"]
    return subprocess.run(version, capture_output=True).returncode == 0


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def copy_image(image: str, to_socket: str, from_command: tuple[str, ...] = ("docker",)) -> None:
    """Move an image from the local engine to another one (no registry here)."""
    save = subprocess.Popen([*from_command, "save", image], stdout=subprocess.PIPE)
    loaded = subprocess.run(
        ["docker", "-H", to_socket, "load"], stdin=save.stdout, capture_output=True, text=True
    )
    save.wait()
    assert save.returncode == 0 and loaded.returncode == 0, loaded.stderr


@dataclass
class SecondEngine:
    """A dockerd of its own: ``socket`` (unix://) for the test's own calls, ``tcp``
    with TLS for the server under test, ``certs`` its client side (DOCKER_CERT_PATH)."""

    socket: str
    tcp: str
    certs: Path

    def tls_env(self) -> dict[str, str]:
        return {
            "DOCKER_HOST": self.tcp,
            "DOCKER_TLS_VERIFY": "1",
            "DOCKER_CERT_PATH": str(self.certs),
        }


# Its own bridge: the second engine must never take or remove the local engine's docker0.
BRIDGE = "omcp-br2"
_SUBNET = "10.231.0.0/24"
_OUT_RULES = [
    f"-t nat -A POSTROUTING -s {_SUBNET} ! -o {BRIDGE} -j MASQUERADE",
    f"-A FORWARD -i {BRIDGE} ! -o {BRIDGE} -j ACCEPT",
    f"-A FORWARD -o {BRIDGE} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    # Traffic within one bridge (its internal egress network's, br-*): Docker's own
    # rules accept that for the networks it manages (no network here disables ICC).
    "-A FORWARD -m physdev --physdev-is-bridged -j ACCEPT",
]


@contextlib.contextmanager
def second_dockerd(where: Path, images: list[str]) -> Iterator[SecondEngine]:
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        pytest.fail("dockerd is needed: .ci/run installs Docker (../shared/docker/engine-up.sh)")
    certs = make_certs(where / "certs")
    subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], capture_output=True)
    subprocess.run(["ip", "addr", "add", "10.231.0.1/24", "dev", BRIDGE], capture_output=True)
    subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
    # Its own iptables rules would share chains with the local engine's: it runs with
    # --iptables=false, and the way out (NAT, forwarding) is given here, by hand.
    for rule in _OUT_RULES:
        subprocess.run(["iptables", *rule.replace("-A", "-I", 1).split()], check=True)
    port, sock = free_port(), where / "docker.sock"
    log = where / "dockerd.log"
    tls = where / "certs"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [dockerd, "--data-root", str(where / "data"), "--exec-root", str(where / "exec"),
             "--pidfile", str(where / "docker.pid"), "-H", f"unix://{sock}",
             "-H", f"tcp://127.0.0.1:{port}", "--tlsverify", "--tlscacert", str(tls / "ca.pem"),
             "--tlscert", str(tls / "server-cert.pem"), "--tlskey", str(tls / "server-key.pem"),
             "--bridge", BRIDGE, "--iptables=false", "--ip-masq=false",
             "--containerd-namespace", "omcp-remote",
             "--containerd-plugins-namespace", "omcp-remote-plugins",
             "--cgroup-parent", "omcp-remote"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait("the second dockerd", lambda: _answers(sock), process, log, 60)
        for image in images:
            copy_image(image, f"unix://{sock}")
        yield SecondEngine(f"unix://{sock}", f"tcp://127.0.0.1:{port}", certs)
    finally:
        subprocess.run(
            f"docker -H unix://{sock} ps -aq | xargs -r docker -H unix://{sock} rm -f",
            shell=True, capture_output=True,
        )  # fmt: skip
        _stop(process)
        for rule in _OUT_RULES:
            subprocess.run(["iptables", *rule.replace("-A", "-D", 1).split()], capture_output=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
        shutil.rmtree(where / "data", ignore_errors=True)


def wheel_house(where: Path) -> Path:
    """A wheelhouse of one wheel, omcp-remote 1.0 (VALUE = 42), for the core scenario."""
    from conftest import readable_dir, zip_wheel

    house = readable_dir(where / "wheels")
    name, data = zip_wheel("omcp_remote", "1.0", {"omcp_remote.py": "VALUE = 42\n"})
    (house / name).write_bytes(data)
    (house / name).chmod(0o644)
    return house


def core_settings(image: str, wheelhouse: Path) -> dict[str, str]:
    """The settings the core scenario runs under, on any engine."""
    return {
        "DOCKER_IMAGE": image,
        "SANDBOX_POOL_SIZE": "1",
        "REAPER_INTERVAL": "1",
        "PACKAGE_WHEELHOUSE": str(wheelhouse),
    }


FIGURE = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3]); plt.show()\nprint('drawn')\n"


async def core_scenario(server: Any, engine: Any, wheel: str) -> None:
    """What a user does, on whatever engine ``server`` drives; ``engine`` is a docker
    client of that engine, to see the sandboxes where they are. The server runs with
    SANDBOX_POOL_SIZE=1, REAPER_INTERVAL=1 and a wheelhouse holding ``wheel``."""
    from conftest import container_exists, container_of, eventually

    sandbox = await server.create(stateful=True)
    assert container_of(engine, sandbox).status == "running"
    # Attach to the runner: state kept between runs, output and errors apart.
    await server.run(sandbox, "x = 41")
    ran = await server.run(sandbox, "import sys; print(x + 1); print('e', file=sys.stderr)")
    assert (ran["output"], ran["error"]) == ("42\n", "e\n"), ran
    # Files both ways (the engine's archive API, nothing through a shared disk).
    args = {"sandbox_id": sandbox, "path": "in/data.txt", "text": "héllo\n"}
    await server.call("upload_file", args)
    read = await server.run(sandbox, "print(open('in/data.txt').read(), end='')")
    assert read["output"] == "héllo\n", read
    await server.run(sandbox, "open('out.txt', 'w').write('back')")
    got = await server.call("download_file", {"sandbox_id": sandbox, "path": "out.txt"})
    assert got["text"] == "back", got
    # A figure comes back as an image.
    drawn = await server.call(
        "execute_python_code", {"sandbox_id": sandbox, "code": FIGURE, "timeout": 60}
    )
    assert drawn["output"] == "drawn\n" and len(drawn["images"]) == 1, drawn
    # An install (from the wheelhouse: a path on the engine's host).
    installed = await server.call("install_package", {"sandbox_id": sandbox, "package": wheel})
    assert installed["success"] is True, installed
    used = await server.run(sandbox, f"import {wheel.replace('-', '_')} as m; print(m.VALUE)")
    assert used["output"] == "42\n", used
    # The pool keeps a warm container there; list shows the sandbox; remove removes it.
    listed = await server.call("list_sandboxes")
    assert [s["id"] for s in listed["sandboxes"]] == [sandbox], listed
    container = container_of(engine, sandbox)
    await server.call("remove_sandbox", {"sandbox_id": sandbox})
    assert not container_exists(engine, container.id)
    # The reaper removes an idle one there.
    short = await server.create(timeout=2)
    idle = container_of(engine, short)
    assert await eventually(lambda: not container_exists(engine, idle.id), 20)


@contextlib.contextmanager
def podman_service(where: Path, images: list[str]) -> Iterator[str]:
    """Rootful Podman's Docker-compatible API on a unix socket of its own, with its
    own storage: ``podman system service`` as its documentation starts it."""
    podman = shutil.which("podman")
    if podman is None:
        pytest.fail("podman is needed for this test: .ci/run installs it (apt-get install podman)")
    store = ["--root", str(where / "root"), "--runroot", str(where / "run")]
    sock, log = where / "podman.sock", where / "podman.log"
    # Rootful Podman raises each container's nofile and nproc limits to its own
    # defaults (a million files), past what this machine lets even root set ("error
    # setting rlimits"): the documented remedy, containers.conf's default_ulimits.
    conf = where / "containers.conf"
    limits = '["nofile=16384:16384", "nproc=16384:16384"]'
    conf.write_text(f"[containers]\ndefault_ulimits = {limits}\n")
    with open(log, "w") as out:
        process = subprocess.Popen(
            [podman, *store, "system", "service", "--time=0", f"unix://{sock}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "CONTAINERS_CONF": str(conf)},
        )
    try:
        _wait("podman system service", lambda: _answers(sock), process, log, 60)
        for image in images:
            copy_image(image, f"unix://{sock}")
        yield f"unix://{sock}"
    finally:
        _stop(process)
        subprocess.run([podman, *store, "rm", "-af", "-t", "0"], capture_output=True)
        subprocess.run([podman, *store, "volume", "prune", "-f"], capture_output=True)
        subprocess.run([podman, *store, "system", "reset", "-f"], capture_output=True)


@dataclass
class Sshd:
    """An sshd on loopback whose sessions reach ``engine`` (its DOCKER_HOST), and an
    ``ssh`` on ``bin`` that uses this test's key and known hosts, as a user's own
    ~/.ssh/config would (ssh reads that from the passwd entry's home, not $HOME)."""

    url: str
    bin: Path


@contextlib.contextmanager
def sshd(where: Path, engine: str) -> Iterator[Sshd]:
    daemon = Path("/usr/sbin/sshd")
    if not daemon.exists():
        pytest.fail("sshd is needed for this test: .ci/run installs openssh-server")
    where.mkdir(parents=True, exist_ok=True)
    for key in ("host_key", "user_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(where / key)], check=True
        )
    (where / "authorized_keys").write_text((where / "user_key.pub").read_text())
    port = free_port()
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege separation directory
    (where / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {where / 'host_key'}\n"
        f"AuthorizedKeysFile {where / 'authorized_keys'}\nPidFile {where / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\n"
        f"SetEnv DOCKER_HOST={engine}\n"
    )
    host_key = (where / "host_key.pub").read_text().split()
    (where / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    (where / "ssh_config").write_text(
        f"Host omcp-engine\n  HostName 127.0.0.1\n  Port {port}\n  User root\n"
        f"  IdentityFile {where / 'user_key'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {where / 'known_hosts'}\n  StrictHostKeyChecking yes\n"
    )
    bin_dir = where / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {where / "ssh_config"} "$@"\n')
    (bin_dir / "ssh").chmod(0o755)
    log = where / "sshd.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(daemon), "-D", "-e", "-f", str(where / "sshd_config")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def answers() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        _wait("sshd", answers, process, log, 30)
        yield Sshd("ssh://omcp-engine", bin_dir)
    finally:
        _stop(process)
