"""The documentation is true to the code: the tool reference against the real tool
schemas, the settings tables against SandboxConfig, the structure against the tree.

`uv run python tests/test_docs.py --write` regenerates the generated parts (between
`<!-- ... -->` markers); the prose around them is written by hand.
"""

import inspect
import re
import sys
from pathlib import Path
from typing import Any

import anyio
from conftest import TOOLS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API = DOCS / "api-reference.md"
SETTINGS_FILES = (ROOT / "README.md", DOCS / "configuration.md")


def _tools() -> list[Any]:
    from omcp_py.config import SandboxConfig
    from omcp_py.main import create_server

    # The host-file tools are offered only when their settings are: documented as set.
    config = SandboxConfig(
        _env_file=None, host_input_dirs="/home/me/data", host_output_dir="/home/me/results"
    )
    server = create_server(config)
    return anyio.run(server.list_tools)


def _type(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if "$ref" in schema:
        return "object"
    return str(schema.get("type", "any"))


def _bounds(schema: dict[str, Any]) -> str:
    parts = []
    for key, text in (
        ("minimum", "≥ {}"),
        ("maximum", "≤ {}"),
        ("minLength", "length ≥ {}"),
        ("maxLength", "length ≤ {}"),
    ):
        if key in schema:
            parts.append(text.format(schema[key]))
    return ", ".join(parts)


def render_tool(tool: Any) -> str:
    """The generated part of one tool's section: what its schemas say."""
    hints = tool.annotations
    flags = [
        name
        for name, on in (
            ("read-only", hints.read_only_hint),
            ("destructive", hints.destructive_hint),
            ("idempotent", hints.idempotent_hint),
            ("open-world", hints.open_world_hint),
        )
        if on
    ]
    lines = [
        f"**{tool.title}.** Hints: {', '.join(flags) or 'none'}.",
        "",
        "Description (what the model reads):",
        "",
        *[f"> {line}".rstrip() for line in inspect.cleandoc(tool.description or "").splitlines()],
        "",
        "| Argument | Type | Default | Allowed | Description |",
        "| --- | --- | --- | --- | --- |",
    ]
    properties = tool.input_schema.get("properties", {})
    required = set(tool.input_schema.get("required", []))
    for name, schema in properties.items():
        default = "required" if name in required else f"`{schema.get('default')!r}`"
        default = default.replace("True", "true").replace("False", "false")
        lines.append(
            f"| `{name}` | {_type(schema)} | {default} | {_bounds(schema)} | "
            f"{schema.get('description', '')} |"
        )
    if not properties:
        lines.append("| (none) | | | | |")
    from omcp_py.content import SUMMARIES

    if tool.output_schema is None:  # answered in blocks: the fields of its summary block
        model, payload = SUMMARIES[tool.name]
        output = model.model_json_schema()
        output["properties"] = {k: v for k, v in output["properties"].items() if k not in payload}
        header = "| Summary field (first text block) | Type | Description |"
    else:
        output, header = tool.output_schema, "| Result field | Type | Description |"
    lines += ["", header, "| --- | --- | --- |"]
    for name, schema in output.get("properties", {}).items():
        lines.append(f"| `{name}` | {_type(schema)} | {schema.get('description', '')} |")
    return "\n".join(lines)


def _block(text: str, name: str) -> str:
    return text.split(f"<!-- {name}:start -->\n")[1].split(f"<!-- {name}:end -->")[0]


def _replace(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
    head, rest = text.split(start)
    return head + start + body + end + rest.split(end, 1)[1]


def settings_table() -> str:
    from omcp_py.config import documented_settings

    rows = ["| Variable | Default | What it sets |", "| --- | --- | --- |"]
    rows += [f"| `{n}` | `{d}` | {t} |" for n, d, t in documented_settings()]
    return "\n".join(rows) + "\n"


def test_api_reference_matches_the_tool_schemas() -> None:
    text = API.read_text()
    tools = _tools()
    assert {tool.name for tool in tools} == TOOLS | {"import_host_file", "export_file"}
    for tool in tools:
        assert f"## `{tool.name}`" in text, f"{tool.name} has no section"
        assert _block(text, f"tool:{tool.name}") == render_tool(tool) + "\n", (
            f"the reference of {tool.name} is stale: uv run python tests/test_docs.py --write"
        )
    documented = set(re.findall(r"^## `(\w+)`", text, re.MULTILINE))
    assert documented == {tool.name for tool in tools}


def test_every_tool_has_errors_and_an_example() -> None:
    text = API.read_text()
    for section in text.split("\n## `")[1:]:
        name = section.split("`", 1)[0]
        assert "Errors" in section, f"{name}: no errors listed"
        assert "```json" in section, f"{name}: no example"


# In the reference's error texts: what is filled in when the error happens (values,
# paths, ids, "…"), and words that come from elsewhere at run time (the OS's strerror,
# the kind of a special file, the limit an engine lacks).
_FILLED_IN = re.compile(
    r"…|\.\.\.|\b[XNM]\b|'x'|\d[\d,.:T+-]*\w*|/[\w/.]+"
    r"|No space left on device|a FIFO|memory limit"
)


def _product_text() -> str:
    """The product's source with adjacent string literals joined as Python joins them,
    and without the backticks its messages put around commands."""
    text = "\n".join(p.read_text() for p in sorted((ROOT / "src/omcp_py").rglob("*.py")))
    text = re.sub(r"[\"']\s*\n\s*[rbf]*[\"']", "", text)
    return text.replace("\\'", "'").replace("`", "")


def documented_errors() -> list[str]:
    """Every error text the reference quotes in its "Errors:" paragraphs."""
    spans = []
    for section in re.findall(r"\nErrors:(.*?)(?:\n\n|$)", API.read_text(), flags=re.S):
        spans += re.findall(r"`([^`]+)`", " ".join(section.split()))
    return spans


def test_documented_error_texts_are_what_the_code_says() -> None:
    # Each sentence of each quoted error, between the parts filled in at run time, is in
    # the code's messages: no error text the server never says.
    source = _product_text()
    errors = documented_errors()
    assert len(errors) > 30, errors
    stale = {}
    for text in errors:
        pieces = [
            piece.strip(" '\".")
            for part in _FILLED_IN.split(text)
            for piece in re.split(r"(?<=[.:;])\s+", part)
        ]
        missing = [p for p in pieces if len(p) >= 12 and p not in source]
        if missing:
            stale[text] = missing
    assert not stale, stale


def test_settings_tables_match_the_model() -> None:
    for path in SETTINGS_FILES:
        assert _block(path.read_text(), "settings") == settings_table(), (
            f"{path.name}: stale settings table: uv run python tests/test_docs.py --write"
        )


def test_codebase_structure_is_true() -> None:
    text = (DOCS / "codebase-structure.md").read_text()
    package = ROOT / "src/omcp_py"
    modules = {
        str(p.relative_to(package)) for p in package.rglob("*.py") if "__pycache__" not in p.parts
    }
    named = set(re.findall(r"`((?:runner/(?:pid1/)?)?\w+\.py)`", text))
    missing = {m for m in modules if m not in named and Path(m).name != "__init__.py"}
    assert not missing, f"modules not described: {sorted(missing)}"
    gone = {m for m in named if m not in modules and not (ROOT / m).exists()}
    places = ("tests", "tests/unit", "tests/security", "bench")
    gone = {m for m in gone if not any((ROOT / d / m).exists() for d in places)}
    assert not gone, f"described but not in the tree: {sorted(gone)}"
    for top in ("Dockerfile", "docker-compose.yml", "install.sh", "sample.env", ".ci/run"):
        assert f"`{top}`" in text, top


def test_docs_index_links_every_page_and_every_link_resolves() -> None:
    index = (DOCS / "README.md").read_text()
    pages = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    for page in pages:
        assert f"({page})" in index, f"docs/README.md does not link {page}"
    for path in [*DOCS.glob("*.md"), ROOT / "README.md", ROOT / "CHANGELOG.md"]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
            assert (path.parent / target).exists(), f"{path.name}: broken link {target}"


def test_changelog_keeps_a_changelog() -> None:
    from omcp_py import __version__

    text = (ROOT / "CHANGELOG.md").read_text()
    assert "keepachangelog.com" in text and "## [Unreleased]" in text
    # `--version` says what the changelog says: a development version is what
    # [Unreleased] describes, a release has its own section.
    if ".dev" not in __version__:
        assert f"## [{__version__}]" in text
    project = (ROOT / "pyproject.toml").read_text()
    assert f'\nversion = "{__version__}"\n' in project


def _write() -> None:
    text = API.read_text()
    for tool in _tools():
        text = _replace(text, f"tool:{tool.name}", render_tool(tool) + "\n")
    API.write_text(text)
    for path in SETTINGS_FILES:
        path.write_text(_replace(path.read_text(), "settings", settings_table()))


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        _write()
