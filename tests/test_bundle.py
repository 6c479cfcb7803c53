"""The MCP Bundle (issue 18 item 3): `omcp_py bundle` packs it with the official CLI
(`npx @anthropic-ai/mcpb`, which validates the manifest first); unpacked, its
`mcp_config` is started the way Claude Desktop starts a bundle's server: placeholders
filled in, the host app's own `uv`, a bare environment (no shell PATH), another
working directory. It must answer `tools/list` and run code."""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import TOOLS, serve_and_use
from mcp.client.stdio import StdioServerParameters

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _fill(value: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], value)


async def test_the_bundle_validates_packs_and_serves(tmp_path: Path) -> None:
    if shutil.which("npx") is None:
        pytest.fail("npx (Node.js) is needed for the MCP Bundle CLI")
    out = tmp_path / "omcp_py.mcpb"
    built = subprocess.run(
        [str(BIN / "omcp_py"), "bundle", "--out", str(out), "--checkout", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    info = subprocess.run(
        ["npx", "-y", "@anthropic-ai/mcpb@2", "info", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert info.returncode == 0 and "omcp_py" in info.stdout, info.stdout + info.stderr

    unpacked = tmp_path / "installed"
    with zipfile.ZipFile(out) as archive:
        names = archive.namelist()
        assert "manifest.json" in names and "uv.lock" in names
        assert not any("__pycache__" in n or n.startswith((".venv", "tests/")) for n in names)
        archive.extractall(unpacked)
    manifest = json.loads((unpacked / "manifest.json").read_text())
    assert manifest["manifest_version"] == "0.4" and manifest["server"]["type"] == "uv"
    assert {t["name"] for t in manifest["tools"]} == TOOLS | {"import_host_file", "export_file"}
    assert {"docker_image", "sandbox_memory", "host_input_dirs", "host_output_dir"} <= set(
        manifest["user_config"]
    )

    shared = tmp_path / "shared"
    shared.mkdir()
    values = {"__dirname": str(unpacked), "user_config.docker_image": "",
              "user_config.sandbox_memory": "", "user_config.host_input_dirs": str(shared),
              "user_config.host_output_dir": ""}  # fmt: skip
    config = manifest["server"]["mcp_config"]
    env = {name: _fill(value, values) for name, value in config.get("env", {}).items()}
    home = os.environ.get("HOME", "/root")
    bare = {"HOME": home, "PATH": "/usr/bin:/bin"}
    # What this test machine needs to reach PyPI and the engine, not the bundle.
    for name in ("SSL_CERT_FILE", "UV_NATIVE_TLS", "DOCKER_HOST", "SANDBOX_RUNTIME"):
        if name in os.environ:
            bare[name] = os.environ[name]
    if "SSL_CERT_FILE" not in bare and Path("/etc/ssl/certs/ca-certificates.crt").exists():
        bare["SSL_CERT_FILE"] = "/etc/ssl/certs/ca-certificates.crt"
    assert config["command"] == "uv"  # the host app runs its own uv for this server type
    params = StdioServerParameters(
        command=str(BIN / "uv"),
        args=[_fill(arg, values) for arg in config["args"]],
        env=bare | env,
        cwd=str(tmp_path),
    )
    tools = await serve_and_use(params, handshake_seconds=300)
    # The shared folder from user_config reached the server: its tool is offered.
    assert tools == TOOLS | {"import_host_file"}
