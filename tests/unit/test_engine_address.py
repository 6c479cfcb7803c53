"""Where the engine is and how it is reached, from the environment and the docker
CLI's files (pure: a temporary DOCKER_CONFIG, no engine)."""

import hashlib
import json
from pathlib import Path

from omcp_py.docker_host import EngineCandidate, current_context, transport


def _context(config: Path, name: str, host: str, skip_verify: bool, tls: bool) -> None:
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = config / "contexts" / "meta" / digest
    meta.mkdir(parents=True)
    endpoint = {"Host": host, "SkipTLSVerify": skip_verify}
    (meta / "meta.json").write_text(json.dumps({"Name": name, "Endpoints": {"docker": endpoint}}))
    if tls:
        files = config / "contexts" / "tls" / digest / "docker"
        files.mkdir(parents=True)
        for pem in ("ca.pem", "cert.pem", "key.pem"):
            (files / pem).write_text("-----BEGIN CERTIFICATE-----\n")


def test_a_context_brings_its_tls_files(tmp_path: Path) -> None:
    _context(tmp_path, "remote", "tcp://engine:2376", skip_verify=False, tls=True)
    found = current_context({"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "remote"}, tmp_path)
    assert found is not None and found.url == "tcp://engine:2376"
    assert found.tls_dir is not None and (found.tls_dir / "ca.pem").is_file()
    assert found.tls_verify
    said = transport(found, {})
    assert said.startswith("over TCP with TLS (client certificate from ") and "verified" in said


def test_a_context_that_skips_verification_says_so(tmp_path: Path) -> None:
    _context(tmp_path, "lax", "tcp://engine:2376", skip_verify=True, tls=True)
    found = current_context({"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "lax"}, tmp_path)
    assert found is not None and not found.tls_verify
    assert "the engine NOT verified" in transport(found, {})


def test_how_each_kind_of_address_is_reached() -> None:
    def said(url: str, source: str = "DOCKER_HOST", env: dict | None = None) -> str:
        return transport(EngineCandidate(url, source), env or {})

    assert said("unix:///var/run/docker.sock") == "over its unix socket"
    assert said("ssh://me@engine").startswith("over ssh")
    plain = said("tcp://engine:2375")
    assert "without TLS" in plain and "controls the engine" in plain
    tls = said("tcp://engine:2376", env={"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "/c"})
    assert (
        tls == "over TCP with TLS (client certificate from /c; the engine's certificate verified)"
    )
    # SANDBOX_BASE_URL takes the same TLS settings.
    assert said("tcp://e:2376", "SANDBOX_BASE_URL", {"DOCKER_CERT_PATH": "/c"}).endswith(
        "the engine NOT verified)"
    )
