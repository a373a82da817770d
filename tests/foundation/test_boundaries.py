"""The split between the two worlds is enforced, not just documented."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "warp", "gsplat", "diffusers", "transformers"}
BLENDER_SIDE = [REPO / "__init__.py", REPO / "preferences.py",
                *(REPO / d for d in ("core", "operators", "panels", "backend/client"))]


def _python_files(paths):
    for p in paths:
        if p.is_file():
            yield p
        elif p.is_dir():
            yield from p.rglob("*.py")


def _imports(tree, module_level_only):
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    if module_level_only:  # module level includes imports nested in if/try at top level
        nodes = [n for top in tree.body for n in ast.walk(top) if not isinstance(top, (ast.FunctionDef, ast.ClassDef))]
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0], node.lineno


def test_backend_never_imports_bpy():
    offenders = []
    for f in _python_files([REPO / "backend"]):
        for name, line in _imports(ast.parse(f.read_text(encoding="utf-8")), module_level_only=False):
            if name in ("bpy", "bpy_extras", "bmesh", "mathutils", "addon_utils"):
                offenders.append(f"{f.relative_to(REPO)}:{line} imports {name}")
    assert not offenders, "backend/ must run without Blender:\n" + "\n".join(offenders)


def test_blender_side_never_imports_compute_stack():
    offenders = []
    for f in _python_files(BLENDER_SIDE):
        for name, line in _imports(ast.parse(f.read_text(encoding="utf-8")), module_level_only=False):
            if name in HEAVY:
                offenders.append(f"{f.relative_to(REPO)}:{line} imports {name}")
    assert not offenders, "the Blender side must not import the compute stack:\n" + "\n".join(offenders)


def test_contract_modules_are_light():
    """What the Blender side imports from backend/ uses only the standard library and numpy."""
    light = [REPO / "backend" / "__init__.py", REPO / "backend" / "protocol.py", REPO / "backend" / "io" / "ply.py",
             REPO / "backend" / "io" / "atomic.py", REPO / "backend" / "render" / "camera.py",
             REPO / "backend" / "io" / "__init__.py", *(REPO / "backend" / "client").glob("*.py")]
    import sys

    stdlib = set(sys.stdlib_module_names)
    for f in light:
        if not f.exists():
            continue
        for name, line in _imports(ast.parse(f.read_text(encoding="utf-8")), module_level_only=False):
            assert name in stdlib or name in ("numpy", "__future__"), f"{f.name}:{line} imports {name}"


def test_backend_uses_relative_imports_for_its_own_modules():
    """Inside Blender the backend package is bl_ext.<repo>.splat_physics.backend, so 'import backend' would fail there."""
    offenders = []
    for f in _python_files([REPO / "backend"]):
        for name, line in _imports(ast.parse(f.read_text(encoding="utf-8")), module_level_only=False):
            if name == "backend":
                offenders.append(f"{f.relative_to(REPO)}:{line}")
    assert not offenders, "use relative imports inside backend/:\n" + "\n".join(offenders)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _relative_import_graph(files) -> dict:
    """Module -> the add-on modules it imports relatively (at any depth: a lazy import is still an edge)."""
    modules = {_module_name(f): f for f in files}
    graph = {}
    for name, f in modules.items():
        package = (name if f.name == "__init__.py" else name.rpartition(".")[0]).split(".")
        graph[name] = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                hits = {f"{base}.{a.name}" for a in node.names} & modules.keys()
                graph[name] |= (hits or {base} & modules.keys()) - {name}
    return graph


def _cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = "done"
        return None

    return next((c for n in sorted(graph) if n not in state and (c := visit(n, [n]))), None)


def test_blender_side_imports_form_no_cycle_and_keep_their_layers():
    """Bake writers, the loop and the registry import one way; panels and operators share core/ui.py, not each
    other. Lazy imports count too: a cycle hidden inside a function is still a cycle."""
    files = [*_python_files(BLENDER_SIDE[2:]), REPO / "preferences.py"]
    graph = _relative_import_graph(files)
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]  # the check itself finds one
    for layer, other in (("panels", "operators"), ("operators", "panels")):
        crossing = [m for m, deps in graph.items() if m.startswith(layer) and any(d.startswith(other) for d in deps)]
        assert not crossing, f"{layer} import {other}: {crossing}"
    assert not {d for d in graph["core.bake.common"] if d.startswith("core.bake.")} - {"core.bake.folder"}
