"""Programs that run inside containers, and the host side that drives them.

PID 1 of every sandbox (the parts in ``pid1/``, joined by ``assemble.py``) and
``sandbox_install.py`` (run in the installer container, never in a sandbox) are
stdlib-only programs delivered on the command line (``python3 -I -c SOURCE``): the
image needs nothing but Python. They run only there; the host reads them on first
use (not at import: the server's start stays as fast as a bare MCP server's).
``client.py`` is the host's side of PID 1's protocol (``pid1/protocol.py``).
"""

from functools import cache
from pathlib import Path


@cache
def source(name: str) -> str:
    """The text of ``sandbox_install.py``."""
    return (Path(__file__).parent / name).read_text(encoding="utf-8")
