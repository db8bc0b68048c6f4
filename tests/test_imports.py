"""The project's import graph has no circle and no arrow back up (issue 28 item 1).

Every import of cli/, comet_core/, experiments/, plotting/ and benchmarks/ is counted, also those inside
functions; `from x import y` counts as an import of x.y when x/y is a module of ours, else of x.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "comet_core", "experiments", "plotting", "benchmarks")



def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is one of our modules."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                drop = node.level - 1 if is_package else node.level
                anchor = anchor[: len(anchor) - drop] if drop else anchor
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                     for alias in node.names]
        for name in names:
            target = _resolve(name, modules)
            if target and target != module:
                targets.add(target)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def _describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    arrows = [f"    {a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return "circle {" + ", ".join(component) + "}\n" + "\n".join(arrows)


def test_no_import_circle():
    graph = import_graph()
    circles = strongly_connected(graph)
    report = "\n".join(_describe(c, graph) for c in circles)
    print(report)
    assert not circles, f"{len(circles)} import circle(s):\n{report}"


def test_circle_finder_catches_a_circle():
    # Positive control: a hand-made circle is found, a chain is not.
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_every_kind_of_import_is_counted(tmp_path):
    # Positive control of the parser: imports inside functions, relative ones, and `from package import
    # module` (an arrow to the module, not only to the package).
    path = tmp_path / "m.py"
    path.write_text("import pkg.a\nfrom . import b\ndef f():\n    from pkg.c import name\n"
                    "    from pkg import d\n")
    modules = {name: path for name in ("pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d", "pkg.m")}
    assert imports_of("pkg.m", path, modules) == {"pkg.a", "pkg.b", "pkg.c", "pkg.d"}


def _arrows_up(sources: str, forbidden: tuple[str, ...]) -> list[str]:
    graph = import_graph()
    bad = []
    for module, targets in sorted(graph.items()):
        if module != sources and not module.startswith(sources + "."):
            continue
        for target in sorted(targets):
            if any(target == f or target.startswith(f + ".") for f in forbidden):
                bad.append(f"{module} -> {target}")
    return bad


# comm/ carries bytes: it knows no protocol, model, system or role type.
COMM_MUST_NOT_IMPORT = ("comet_core.mpc", "comet_core.roles", "comet_core.models", "comet_core.sparse",
                        "comet_core.predictor", "comet_core.systems", "experiments", "cli")


def test_comm_imports_no_protocol_code():
    bad = _arrows_up("comet_core.comm", COMM_MUST_NOT_IMPORT)
    print("\n".join(bad))
    assert not bad, "comm/ imports code above it:\n" + "\n".join(bad)


def test_core_and_experiments_do_not_import_cli():
    bad = (_arrows_up("comet_core", ("cli", "experiments")) + _arrows_up("experiments", ("cli",))
           + _arrows_up("plotting", ("cli",)))
    print("\n".join(bad))
    assert not bad, "arrows back up to the CLI:\n" + "\n".join(bad)


def test_plotting_sits_above_the_runs_it_reads():
    # plotting/ reads what experiments/ and the core wrote; nothing below it draws or publishes.
    bad = _arrows_up("comet_core", ("plotting",)) + _arrows_up("experiments", ("plotting",))
    print("\n".join(bad))
    assert not bad, "arrows up to plotting/:\n" + "\n".join(bad)
