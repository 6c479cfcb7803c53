"""The rooms stay small and point one way: no module over 600 lines, no class over
300, no import circle among the package's modules (imports for type checking only are
not counted: they never run)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "omcp_py"


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c in known and c != name}
    return found


def test_no_module_over_600_lines_and_no_class_over_300() -> None:
    for name, tree in _modules().items():
        lines = max((getattr(n, "end_lineno", 0) or 0) for n in ast.walk(tree))
        assert lines <= 600, f"{name} has {lines} lines"
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                assert size <= 300, f"{name}.{node.name} has {size} lines"


def test_no_import_circle() -> None:
    modules = _modules()
    # A package imports what its __init__ imports; a module imports its package too.
    graph = {name: _imports(name, tree, set(modules)) for name, tree in modules.items()}
    graph = {n: {d for d in deps if not n.startswith(d + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                circle = [*path[path.index(dep) :], dep]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_tests_share_helpers_only_through_conftest() -> None:
    # An import from another test module runs only when that test runs, so a helper
    # renamed there broke a test in a module nobody re-ran (stop 24's red CI).
    tests = PACKAGE.parents[1] / "tests"
    shared = ast.parse((tests / "conftest.py").read_text())
    defined = {
        n.name
        for n in shared.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    } | {
        t.id
        for n in shared.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    for path in sorted(tests.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [a.name for a in node.names]
                module = node.module
            elif isinstance(node, ast.Import):
                names, module = [], ""
                for alias in node.names:
                    assert not alias.name.startswith("test_"), f"{path.name} imports {alias.name}"
            else:
                continue
            assert not module.startswith("test_"), f"{path.name} imports from {module}"
            if module == "conftest":
                missing = set(names) - defined
                assert not missing, f"{path.name} imports {missing} that conftest lacks"


def test_no_two_test_modules_share_a_name() -> None:
    # The tests are imported by their base name (rootdir, no packages): a second
    # test_x.py in another folder stops the whole collection in CI.
    names = [p.name for p in (PACKAGE.parents[1] / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
