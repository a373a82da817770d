"""The extension registers, exposes its preferences, draws its panels, unregisters cleanly and validates."""

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import bpy
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

OPERATORS = ("SPLAT_OT_convert_to_particles", "SPLAT_OT_add_interaction", "SPLAT_OT_mark_anchor_volume",
             "SPLAT_OT_preview_fill", "SPLAT_OT_clear_fill_preview", "SPLAT_OT_override_materials",
             "SPLAT_OT_clear_material_locks", "SPLAT_OT_material_preset", "SPLAT_OT_write_job", "SPLAT_OT_estimate_materials",
             "SPLAT_OT_preview_motion", "SPLAT_OT_simulate_bake", "SPLAT_OT_free_bake", "SPLAT_OT_open_log",
             "SPLAT_OT_monitor_job", "SPLAT_OT_cancel_job")
PANELS = ("SPLAT_PT_physics", "SPLAT_PT_domain", "SPLAT_PT_material", "SPLAT_PT_forces", "SPLAT_PT_interactions",
          "SPLAT_PT_estimate", "SPLAT_PT_bake")


def test_classes_and_properties_are_registered(addon):
    for name in OPERATORS + PANELS:
        assert hasattr(bpy.types, name), name
    props = bpy.types.Object.bl_rna.properties
    assert props["splat_physics"].fixed_type.identifier == "SplatPhysicsSettings"
    assert props["splat_role"].fixed_type.identifier == "SplatRoleSettings"
    panel = getattr(bpy.types, "SPLAT_PT_physics")
    assert (panel.bl_space_type, panel.bl_region_type, panel.bl_category) == ("VIEW_3D", "UI", "Splat Physics")


def test_preferences_are_exposed(addon):
    prefs = bpy.context.preferences.addons[addon.__name__].preferences
    for field in ("backend_python", "device", "svd_model", "modelscope_model"):
        assert field in prefs.bl_rna.properties, field
    assert {i.identifier for i in prefs.bl_rna.properties["device"].enum_items} == {"auto", "cpu", "cuda"}
    assert prefs.backend_python  # the fixture points it at the backend environment


class RecordingLayout:
    """Stands in for UILayout when calling Panel.draw headless; checks every prop and operator it is given."""

    def __init__(self, log):
        self.log = log
        self.use_property_split = False
        self.active = True
        self.alignment = "EXPAND"

    def _child(self, *args, **kwargs):
        return RecordingLayout(self.log)

    row = column = box = split = grid_flow = column_flow = _child

    def prop(self, data, name, **kwargs):
        assert name in data.bl_rna.properties, f"{type(data).__name__} has no property {name!r}"
        self.log.append(("prop", name))

    def operator(self, idname, **kwargs):
        module, name = idname.split(".")
        cls = getattr(bpy.types, f"{module.upper()}_OT_{name}", None)
        assert cls is not None, f"operator {idname} is not registered"
        self.log.append(("operator", idname))
        return OperatorProps(getattr(getattr(bpy.ops, module), name).get_rna_type().properties)

    def operator_menu_enum(self, idname, prop, **kwargs):
        module, name = idname.split(".")
        assert getattr(bpy.types, f"{module.upper()}_OT_{name}", None) is not None, f"{idname} is not registered"
        assert prop in getattr(getattr(bpy.ops, module), name).get_rna_type().properties
        self.log.append(("operator", idname))

    def label(self, text="", **kwargs):
        self.log.append(("label", text))

    def progress(self, text="", factor=0.0, type="BAR"):
        assert 0.0 <= factor <= 1.0
        self.log.append(("progress", text))

    def separator(self, **kwargs):
        pass


class OperatorProps:
    def __init__(self, props):
        object.__setattr__(self, "_props", props)

    def __setattr__(self, name, value):
        assert name in self._props, f"operator has no property {name!r}"


def draw_panels(context, names=PANELS):
    """Draw every panel that polls true; return the log of what was drawn."""
    log = []
    for name in names:
        cls = getattr(bpy.types, name)
        if cls.poll(context):
            holder = type("PanelSelf", (), {"layout": RecordingLayout(log)})()
            cls.draw(holder, context)
    return log


def test_panels_draw_in_each_state(addon, clean_scene):
    mesh = bpy.data.meshes.new("Pts")
    mesh.vertices.add(200)
    mesh.vertices.foreach_set("co", np.random.default_rng(0).uniform(-0.3, 0.3, 600).astype(np.float32))
    obj = bpy.data.objects.new("Pts", mesh)
    clean_scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj

    before = draw_panels(bpy.context)
    assert ("operator", "splat.convert_to_particles") in before
    bpy.ops.splat.convert_to_particles()
    obj.splat_physics.show_heatmap = True  # no materials yet: nothing to show, nothing breaks
    mats = importlib.import_module(f"{addon.__name__}.core.materials")
    mats.override_materials(obj, np.arange(200) < 50, {"youngs_modulus": 1e4, "poisson_ratio": 0.3,
                                                       "density": 800.0}, youngs_modulus=1e6)
    obj.splat_physics.show_heatmap = True
    after = draw_panels(bpy.context)
    for expected in (("prop", "n_grid"), ("prop", "prior"), ("operator", "splat.estimate_materials"),
                     ("operator", "splat.simulate_bake"), ("prop", "bake_target"), ("prop", "heat_min_color"),
                     ("prop", "stop_rule"), ("prop", "stop_tolerance"), ("prop", "learn_nu")):
        assert expected in after, expected
    assert any(kind == "label" and "particles per cell" in text for kind, text in after)
    assert any(kind == "label" and "Projected size" in text for kind, text in after)

    for role in ("POKE", "WIND", "COLLIDER", "ANCHOR"):
        bpy.context.view_layer.objects.active = obj
        bpy.ops.splat.add_interaction(role=role)
        log = draw_panels(bpy.context)  # the helper is active: the panels show its target's settings
        assert ("prop", "role") in log and ("prop", "n_grid") in log


_CYCLE_SCRIPT = r"""
import json, os, sys, tempfile
import bpy, addon_utils
repo_dir, module, addon_id = sys.argv[1:4]
prefs = bpy.context.preferences
prefs.extensions.repos.new(name=module, module=module, custom_directory=repo_dir, source="USER")
name = f"bl_ext.{module}.{addon_id}"
names = json.loads(sys.argv[4])
report = {}
addon_utils.enable(name, default_set=True, handle_error=None)
report["enabled"] = [n for n in names if hasattr(bpy.types, n)]
report["prefs"] = bpy.context.preferences.addons[name].preferences is not None
report["prop_enabled"] = all(p in bpy.types.Object.bl_rna.properties for p in ("splat_physics", "splat_role"))
addon_utils.disable(name, default_set=True, handle_error=None)
report["after_disable"] = [n for n in names if hasattr(bpy.types, n)]
report["addon_after_disable"] = name in bpy.context.preferences.addons
report["prop_after_disable"] = any(p in bpy.types.Object.bl_rna.properties for p in ("splat_physics", "splat_role"))
addon_utils.enable(name, default_set=True, handle_error=None)
report["reenabled"] = [n for n in names if hasattr(bpy.types, n)]
addon_utils.disable(name, default_set=True, handle_error=None)
print("REPORT" + json.dumps(report))
"""


def test_unregister_removes_everything_and_reenables(tmp_path, extension_dir):
    names = list(OPERATORS + PANELS)
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"))
    proc = subprocess.run([sys.executable, "-c", _CYCLE_SCRIPT, str(extension_dir), "splat_cycle", "splat_physics",
                           json.dumps(names)], capture_output=True, text=True, timeout=120, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(line[len("REPORT"):])
    assert sorted(report["enabled"]) == sorted(names) and report["prop_enabled"] and report["prefs"]
    assert report["after_disable"] == [] and not report["prop_after_disable"] and not report["addon_after_disable"]
    assert sorted(report["reenabled"]) == sorted(names)


def _blender_ext_cli() -> Path:
    """bpy/<version>/scripts/addons_core/bl_pkg/cli/blender_ext.py, found upwards from the bpy package."""
    rel = Path("scripts/addons_core/bl_pkg/cli/blender_ext.py")
    for parent in Path(bpy.__file__).resolve().parents:
        if (parent / rel).is_file():
            return parent / rel
    raise AssertionError(f"blender_ext.py not found above {bpy.__file__}")


def test_extension_validates_with_blenders_cli(tmp_path):
    src = tmp_path / "splat_physics"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.pyc", ".pytest_cache",
                                                             "demo_out", "dist", "tests", "benchmarks"))
    proc = subprocess.run([sys.executable, str(_blender_ext_cli()), "validate", str(src)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout


def test_the_extension_zip_ships_only_what_the_add_on_needs(tmp_path):
    """`make extension` (scripts/extension.py build): the add-on, its backend and the backend's requirements."""
    import zipfile

    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "extension.py"), "build", "--output-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (zip_path,) = tmp_path.glob("splat_physics-*.zip")
    names = zipfile.ZipFile(zip_path).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"__init__.py", "blender_manifest.toml", "preferences.py", "README.md", "backend", "core",
                   "operators", "panels", "requirements"}, top
    assert "requirements/backend.txt" in names and "requirements/dev.txt" not in names
    assert "backend/protocol.py" in names and "core/bake/__init__.py" in names
    assert not any(n.endswith((".pyc", ".ply")) or "__pycache__" in n for n in names)
