"""The import graph of src/stackalign, built with `ast` (module-level and function-level imports alike).

Layering rules: no import cycle among the modules (a package is its `__init__`, so a submodule that takes
a name from its own package while the package imports that submodule is a cycle: import the name from the
module that defines it), in particular none through the run driver (`runner.run`), its context and its
backends, or through the recipe and its methods; no import cycle between top-level subpackages; nothing in
`stackalign.training` imports from `stackalign.runner`, and the recipe base (what run and train share)
imports neither.
"""

import ast
from pathlib import Path

import stackalign

ROOT = Path(stackalign.__file__).resolve().parent

# strongly connected components of the subpackage graph (each a sorted tuple of subpackage names)
KNOWN_CYCLES: set[tuple[str, ...]] = set()
KNOWN_UPWARD: set[tuple[str, str]] = set()
# what `stackalign run` and `stackalign train` share: below both, importing neither
RECIPE_BASE = (
    "stackalign.cache",
    "stackalign.config",
    "stackalign.prompt_sources",
    "stackalign.recipe_base",
    "stackalign.rundir",
    "stackalign.store",
)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_edges(root: Path = ROOT) -> set[tuple[str, str]]:
    """(importer, imported) module pairs for every `import` / `from ... import` anywhere in a file (inside
    functions too), relative imports resolved; only targets inside the package."""
    top = root.name
    edges = set()
    for path in sorted(root.rglob("*.py")):
        mod = _module_name(path, root)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    targets = [".".join(base + ([node.module] if node.module else []))]
                else:
                    targets = [node.module or ""]
                if node.module is None or targets[0] == top:  # `from . import x` / `from stackalign import x`
                    targets = [f"{targets[0]}.{alias.name}" for alias in node.names]
            else:
                continue
            edges |= {(mod, t) for t in targets if t == top or t.startswith(top + ".")}
    return edges


def subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def subpackage_graph(edges: set[tuple[str, str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        sa, sb = subpackage(a), subpackage(b)
        if sa and sb and sa != sb:
            graph.setdefault(sa, set()).add(sb)
    return graph


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Strongly connected components with more than one node (Tarjan's algorithm)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.add(tuple(sorted(comp)))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


def upward_imports(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, b in edges if subpackage(a) == "training" and subpackage(b) == "runner"}


def test_cycle_finder_on_a_toy_graph():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert cycles(g) == {("a", "b", "c"), ("d", "e")}
    assert cycles({"a": {"b"}, "b": {"c"}}) == set()


def test_edges_include_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "stackalign"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "other.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import mod\n")
    (pkg / "sub" / "mod.py").write_text(
        "import os\n\ndef f():\n    from stackalign.other import x\n    from ..other import y\n    return x, y\n"
    )
    edges = import_edges(pkg)
    assert ("stackalign.sub.mod", "stackalign.other") in edges  # function level, absolute and relative
    assert ("stackalign.sub", "stackalign.sub.mod") in edges
    assert not any(b == "os" for _, b in edges)


def test_the_real_graph_is_read():
    graph = subpackage_graph(import_edges())
    assert "decoding" in graph["runner"] and "shaping" in graph["decoding"]


def test_no_new_cycles_or_upward_imports():
    edges = import_edges()
    assert cycles(subpackage_graph(edges)) <= KNOWN_CYCLES
    assert upward_imports(edges) <= KNOWN_UPWARD


def test_no_cycle_between_subpackages():
    assert cycles(subpackage_graph(import_edges())) == set()


def test_training_does_not_import_runner():
    assert upward_imports(import_edges()) == set()


def test_recipe_and_methods_are_in_no_module_cycle():
    """The recipe validates its methods (recipe -> methods -> decoders); nothing the methods import leads back
    to the recipe, not even through another module (prompts) or a function-level import."""
    graph: dict[str, set[str]] = {}
    for a, b in import_edges():
        graph.setdefault(a, set()).add(b)
    mine = {f"stackalign.runner.{m}" for m in ("recipe", "methods", "decoders", "prompts")}
    assert [c for c in cycles(graph) if mine & set(c)] == []
    assert ("stackalign.runner.recipe", "stackalign.runner.methods") in import_edges()  # the graph is read


def modules_of(root: Path = ROOT) -> set[str]:
    """Every module of the package at `root` (a package is its `__init__`), importing anything or not."""
    return {_module_name(path, root) for path in root.rglob("*.py")}


def module_graph(edges: set[tuple[str, str]], root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> modules it imports (`from stackalign.x import name` counts as an import of the module
    `stackalign.x` when `name` is no module of the package at `root`)."""
    modules = modules_of(root) | {a for a, _ in edges}
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        while b not in modules and "." in b:
            b = b.rpartition(".")[0]
        if a != b:
            graph.setdefault(a, set()).add(b)
    return graph


def test_module_cycle_finder_sees_a_function_level_cycle(tmp_path):
    pkg = tmp_path / "stackalign"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from stackalign.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from stackalign import a\n    return a\n")
    assert cycles(module_graph(import_edges(pkg), pkg)) == {("stackalign.a", "stackalign.b")}


def test_module_graph_keeps_a_module_that_imports_nothing(tmp_path):
    """`from stackalign.sub.leaf import x` is an import of the leaf module, not of the package `stackalign.sub`
    (whose `__init__` imports the module that imports the leaf: no cycle)."""
    pkg = tmp_path / "stackalign"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from stackalign.sub.mod import y\n")
    (pkg / "sub" / "leaf.py").write_text("x = 1\n")
    (pkg / "sub" / "mod.py").write_text("from stackalign.sub.leaf import x\n\ny = x\n")
    graph = module_graph(import_edges(pkg), pkg)
    assert graph["stackalign.sub.mod"] == {"stackalign.sub.leaf"}
    assert cycles(graph) == set()


def test_no_import_cycle_among_modules():
    assert cycles(module_graph(import_edges())) == set()


def test_run_driver_context_and_backends_form_no_cycle():
    for component in cycles(module_graph(import_edges())):
        inside = [m for m in component if m in ("stackalign.runner.run", "stackalign.runner.context")]
        inside += [m for m in component if m.startswith("stackalign.runner.backends")]
        assert not inside, f"import cycle through {inside}: {component}"


def test_recipe_base_imports_neither_run_nor_train():
    edges = import_edges()
    assert all((ROOT.parent / (m.replace(".", "/") + ".py")).is_file() for m in RECIPE_BASE)
    upward = {(a, b) for a, b in edges if a in RECIPE_BASE and subpackage(b) in ("runner", "training")}
    assert upward == set()
