"""Programs that run inside containers, and the host side that drives them.

``sandbox_runner.py`` (PID 1 of every sandbox) and ``sandbox_install.py`` (run in
the installer container, never in a sandbox) are stdlib-only programs delivered
on the command line (``python3 -I -c SOURCE``): the image needs nothing but Python.
They are never imported on the host, only read, on first use (not at import: the
server's start stays as fast as a bare MCP server's).
"""

from functools import cache
from pathlib import Path


@cache
def source(name: str) -> str:
    """The text of ``sandbox_runner.py`` or ``sandbox_install.py``."""
    return (Path(__file__).parent / name).read_text(encoding="utf-8")
