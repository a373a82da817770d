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

