"""The import graph: kernels/ stands alone (imports nothing from a1jax), and no module of a1jax or kernels imports
itself back through others. Read from the source (every import statement, also those inside functions), so a lazy
import cannot hide a circle."""
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("a1jax", "kernels")


def _modules() -> dict[str, str]:
    out = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    out[module.removesuffix(".__init__")] = path
    return out


def _imports(module: str, path: str, modules: dict) -> set[str]:
    """The modules of `modules` that `module` imports (`from pkg import sub` counts as importing pkg.sub only)."""
    def known(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    out = set()
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            names = subs + ([base] if len(subs) < len(node.names) else [])
        else:
            continue
        out |= {m for m in map(known, names) if m and m != module}
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as a path [a, b, ..., a], or []."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                return stack[stack.index(d):] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        state[m] = "done"
        stack.pop()
        return []

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return []


def test_kernels_import_nothing_from_a1jax():
    graph = _graph()
    bad = sorted((m, d) for m, deps in graph.items() if m.startswith("kernels") for d in deps
                 if d.startswith("a1jax"))
    assert not bad, f"kernels/ must not depend on a1jax: {bad}"


def test_no_import_circles():
    graph = _graph()
    assert "a1jax.train.checkpoint" in graph and "kernels.reference.gated_delta_rule" in graph
    assert _cycle(graph) == [], " -> ".join(_cycle(graph))


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_model_and_train_import_no_stage_above_them():
    """model <- train <- distill <- stages: the stage table (a1jax/stages.py) sits above the loop and the steps, so
    nothing in a1jax/train or a1jax/model reaches a1jax/distill or the table, directly or through another module."""
    graph = _graph()

    def reached(m, seen):
        for d in graph[m] - seen:
            seen.add(d)
            reached(d, seen)
        return seen

    within = lambda m, packages: any(m == p or m.startswith(p + ".") for p in packages)
    bad = sorted((m, d) for m in graph if within(m, ("a1jax.train", "a1jax.model"))
                 for d in reached(m, set()) if within(d, ("a1jax.distill", "a1jax.stages")))
    assert not bad, f"a1jax/train and a1jax/model must not import the stages above them: {bad}"
