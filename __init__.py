"""Splat Physics: give Gaussian-splat and point-cloud objects real physics.

This is the Blender side. It uses only bpy, numpy and the standard library; the compute stack
runs in the backend process (see README.md, "How it is built", and backend/protocol.py, the contract).
Modules (each folder's README.md says what it holds and may import):

* core/            Blender-side logic: splat import/export, the splat look, bakes, job writing
* backend/client/  starting and following backend runs (no bpy; also imported by plain Python)
* operators/       thin operators over core/
* panels/          the sidebar UI
* preferences.py   add-on preferences (backend interpreter, device, model locations)
"""

import importlib

# Module order matters: property groups before the operators and panels that use them.
_MODULE_NAMES = (
    "preferences",
    "core.props",
    "core.bake.relocate",
    "operators.backend_ops",
    "operators.io_ops",
    "operators.physics_ops",
    "panels.physics_panel",
)


def _modules():
    for name in _MODULE_NAMES:
        yield importlib.import_module(f".{name}", __package__)


def register():
    for mod in _modules():
        mod.register()


def unregister():
    for mod in reversed(list(_modules())):
        mod.unregister()
