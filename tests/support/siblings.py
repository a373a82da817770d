"""Loading a sibling test module's helpers (test folders are not packages under --import-mode=importlib)."""

import importlib.util
from pathlib import Path


def load_sibling(test_file: str, name: str):
    """The module ``name``.py beside ``test_file``, loaded under a private name."""
    path = Path(test_file).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"splat_{name}_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
