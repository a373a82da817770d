"""Validate or build the extension zip with Blender's own extension CLI, which ships in the bpy wheel.

    python scripts/extension.py validate
    python scripts/extension.py build --output-dir dist
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What never belongs in the extension (the manifest's [build] excludes say the same for `build`).
IGNORE = shutil.ignore_patterns(".git", ".venv*", ".helper", ".ci", "__pycache__", "*.pyc", ".pytest_cache",
                                "demo_out", "dist", "tests", "benchmarks", ".gl", ".whl")


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
    shutil.copytree(REPO, target, ignore=IGNORE, symlinks=False)
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
