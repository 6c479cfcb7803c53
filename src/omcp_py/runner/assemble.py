"""The program PID 1 of a sandbox runs: the parts of ``runner/pid1`` joined into one.

It travels on the command line (``python3 -I -c SOURCE``), so it is one text: each
part's imports of other parts are dropped (their names are already defined above it,
the parts being joined in dependency order), module docstrings too (argv is bounded),
and ``main()`` is called at the end. The parts stay importable as they are, for tests.
"""

import ast
from functools import cache
from pathlib import Path

PARTS = (
    "protocol",
    "procs",
    "figures",
    "seccomp",
    "become",
    "child",
    "zygote",
    "files",
    "job",
    "loop",
)
PACKAGE = "omcp_py.runner.pid1"
_HERE = Path(__file__).parent / "pid1"


def part_source(name: str) -> str:
    return (_HERE / f"{name}.py").read_text(encoding="utf-8")


def _body(source: str) -> str:
    """A part without its docstring and its imports of other parts."""
    tree = ast.parse(source)
    drop: set[int] = set()
    for index, node in enumerate(tree.body):
        is_docstring = (
            index == 0
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        )
        is_part_import = isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            PACKAGE
        )
        if is_docstring or is_part_import:
            drop.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    lines = source.splitlines()
    return "\n".join(line for number, line in enumerate(lines, 1) if number not in drop).strip()


@cache
def program() -> str:
    """The whole program, read on first use (not at import: starting the server stays
    as fast as a bare MCP server)."""
    chunks = [
        "# PID 1 of an omcp_py sandbox: the parts of omcp_py/runner/pid1, joined by"
        " runner/assemble.py."
    ]
    for name in PARTS:
        chunks.append(f"# ---- pid1/{name}.py\n{_body(part_source(name))}")
    chunks.append("main()\n")
    return "\n\n\n".join(chunks)
