"""Validate or build the extension zip with Blender's own extension CLI, which ships in the bpy wheel.

    python scripts/extension.py validate
    python scripts/extension.py build --output-dir dist
"""

from __future__ import annotations

import argparse
import fnmatch
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def exclude_patterns() -> list[str]:
    """The manifest's [build] paths_exclude_pattern: the one list of what the zip leaves out."""
    with open(REPO / "blender_manifest.toml", "rb") as f:
        return tomllib.load(f)["build"]["paths_exclude_pattern"]


def excluded(rel: str, is_dir: bool, patterns: list[str]) -> bool:
    """gitignore-style match as the manifest means it: '/x' anchors at the root, 'x/' matches folders only."""
    name = rel.rsplit("/", 1)[-1]
    for pat in patterns:
        if pat.endswith("/") and not is_dir:
            continue
        p = pat.rstrip("/")
        if p.startswith("/") and fnmatch.fnmatchcase(rel, p[1:]) or not p.startswith("/") and fnmatch.fnmatchcase(name, p):
            return True
    return False


def _ignore(patterns: list[str]):
    def ignore(folder: str, names: list[str]) -> set[str]:
        rel_dir = Path(folder).resolve().relative_to(REPO).as_posix()
        rel = (lambda n: n if rel_dir == "." else f"{rel_dir}/{n}")
        return {n for n in names if excluded(rel(n), (Path(folder) / n).is_dir(), patterns)}
    return ignore


def blender_ext_cli() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("bpy")  # locate the wheel without starting Blender
    if spec is None or not spec.origin:
        raise SystemExit("bpy is not installed in this environment")
    base = Path(spec.origin).parent
    hits = sorted(base.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not hits:
        raise SystemExit(f"blender_ext.py not found under {base}")
    return hits[-1]


def clean_copy(dest: Path) -> Path:
    """A copy of the extension without environments and caches: validation then reads only what ships."""
    target = dest / "splat_physics"
    shutil.copytree(REPO, target, ignore=_ignore(exclude_patterns()), symlinks=False)
    return target


def run(args: list[str]) -> int:
    return subprocess.run([sys.executable, str(blender_ext_cli()), *args]).returncode


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=("validate", "build"))
    parser.add_argument("--output-dir", default="dist")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = clean_copy(Path(tmp))
        if ns.action == "validate":
            return run(["validate", str(src)])
        out = (REPO / ns.output_dir).resolve()
        out.mkdir(parents=True, exist_ok=True)
        return run(["build", "--source-dir", str(src), "--output-dir", str(out)])


if __name__ == "__main__":
    sys.exit(main())
