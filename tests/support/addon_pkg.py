"""Import the add-on's bpy-free modules (core.runner, core.jobs) in plain Python.

Inside Blender the repo root is the package ``bl_ext.<repo>.splat_physics``; here it is loaded under
the name ``splat_physics`` so that the same relative imports (``from ..backend import protocol``) work.
"""

import importlib
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "splat_physics"


def load(module: str):
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = pkg
        spec.loader.exec_module(pkg)
    return importlib.import_module(f"{PACKAGE}.{module}")
