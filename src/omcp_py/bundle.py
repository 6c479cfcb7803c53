"""``omcp_py bundle``: an MCP Bundle (``.mcpb``) for one-click install in Claude Desktop.

Built from a checkout: the manifest (v0.4, the ``uv`` server type: the host app brings
uv and Python and installs the locked dependencies) is written from the settings model
and the server's own tool list, next to ``pyproject.toml``, ``uv.lock``, the README and
``src/``; the official CLI (``npx @anthropic-ai/mcpb``) validates and packs it.
"""

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from omcp_py import __version__

MCPB_CLI = ["npx", "-y", "@anthropic-ai/mcpb@2"]
# What a user changes most, asked by Claude Desktop at install; empty means "default".
USER_CONFIG: dict[str, dict[str, Any]] = {
    "docker_image": {
        "type": "string",
        "title": "Sandbox image",
        "description": "Docker image the sandboxes run (DOCKER_IMAGE); empty: python:3.11-slim.",
        "required": False,
        "default": "",
    },
    "sandbox_memory": {
        "type": "string",
        "title": "Memory per sandbox",
        "description": "e.g. 512m or 2g (SANDBOX_MEMORY); empty: 512m.",
        "required": False,
        "default": "",
    },
    "host_input_dirs": {
        "type": "directory",
        "title": "Folder to share with sandboxes",
        "description": "import_host_file may copy files from it into a sandbox "
        "(HOST_INPUT_DIRS); empty: none.",
        "required": False,
    },
    "host_output_dir": {
        "type": "directory",
        "title": "Folder for results",
        "description": "export_file saves sandbox files into it, never overwriting "
        "(HOST_OUTPUT_DIR); empty: none.",
        "required": False,
    },
}
_INCLUDED = ("pyproject.toml", "uv.lock", "README.md")


def manifest(tools: list[dict[str, str]]) -> dict[str, Any]:
    """The bundle's manifest.json."""
    env = {name.upper(): f"${{user_config.{name}}}" for name in USER_CONFIG}
    return {
        "manifest_version": "0.4",
        "name": "omcp_py",
        "display_name": "omcp_py: Python sandboxes",
        "version": __version__,
        "description": "Isolated, hardened Python sandboxes in Docker for Claude.",
        "long_description": "Create sandboxes, run Python in them, install packages, move "
        "files. Each sandbox is a Docker container with no network, a read-only root, no "
        "capabilities and memory, CPU and process limits. Needs Docker running.",
        "author": {"name": "omcp_py"},
        "license": "MIT",
        "keywords": ["python", "sandbox", "docker", "code"],
        "server": {
            "type": "uv",
            "entry_point": "src/omcp_py/__main__.py",
            "mcp_config": {
                "command": "uv",
                "args": ["run", "--frozen", "--no-dev", "--directory", "${__dirname}", "omcp_py"],
                "env": env,
            },
        },
        "tools": tools,
        "user_config": USER_CONFIG,
        "compatibility": {
            "platforms": ["darwin", "linux", "win32"],
            "runtimes": {"python": ">=3.10"},
        },
    }


def _tools() -> list[dict[str, str]]:
    import anyio

    from omcp_py.config import SandboxConfig
    from omcp_py.main import create_server

    # Documented as offered when the host folders are set.
    config = SandboxConfig(_env_file=None, host_input_dirs="/in", host_output_dir="/out")
    listed = anyio.run(create_server(config).list_tools)
    return [{"name": t.name, "description": (t.description or "").split("\n")[0]} for t in listed]


def stage(checkout: Path, into: Path) -> Path:
    """Lay out the bundle's files under ``into``; returns the manifest's path.

    Raises:
        FileNotFoundError: ``checkout`` is not an omcp_py checkout.
    """
    for name in _INCLUDED:
        shutil.copy2(checkout / name, into / name)
    shutil.copytree(
        checkout / "src" / "omcp_py",
        into / "src" / "omcp_py",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    path = into / "manifest.json"
    path.write_text(json.dumps(manifest(_tools()), indent=2) + "\n")
    return path


def build(checkout: Path, out: Path) -> int:
    """Write ``out`` (an .mcpb) from the checkout; 0 on success."""
    if not (checkout / "pyproject.toml").is_file() or not (checkout / "uv.lock").is_file():
        print(
            f"omcp_py bundle: {checkout} is not an omcp_py checkout (no pyproject.toml and "
            f"uv.lock): run it from the repository."
        )
        return 2
    if shutil.which("npx") is None:
        print("omcp_py bundle: npx is needed (Node.js) to run the official MCP Bundle CLI.")
        return 2
    with tempfile.TemporaryDirectory() as staging:
        manifest_path = stage(checkout, Path(staging))
        for step in (["validate", str(manifest_path)], ["pack", staging, str(out.resolve())]):
            proc = subprocess.run([*MCPB_CLI, *step], capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                print(f"omcp_py bundle: mcpb {step[0]} failed:\n{proc.stdout}{proc.stderr}")
                return 1
    print(f"wrote {out}: open it with Claude Desktop (or drag it onto its window) to install")
    return 0
