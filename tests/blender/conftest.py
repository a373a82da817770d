"""Fixtures for tests that run inside real Blender (bpy as a module).

These tests run twice in CI: in the main environment (bpy 4.5 LTS) and in .venv-bpy50 (bpy 5.0).
They may import bpy, numpy and the numpy-only parts of backend (protocol, io) - nothing heavy.
"""

import os
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ADDON_ID = "splat_physics"
REPO_MODULE = "splat_dev"
ADDON_MODULE = f"bl_ext.{REPO_MODULE}.{ADDON_ID}"

# Keep Blender's user data out of the developer's home.
_USER = tempfile.mkdtemp(prefix="splat_blender_user_")
os.environ.setdefault("BLENDER_USER_RESOURCES", _USER)

bpy = pytest.importorskip("bpy")


def _backend_python() -> str:
    """The interpreter that has the backend stack (the main .venv), also when running under .venv-bpy50."""
    env = os.environ.get("SPLAT_BACKEND_PYTHON")
    if env:
        return env
    main = REPO / ".venv" / "bin" / "python"
    return str(main) if main.exists() else sys.executable


@pytest.fixture(scope="session")
def extension_dir(tmp_path_factory):
    """An extension repository folder whose one extension is this repo (a symlink named by the add-on id)."""
    d = tmp_path_factory.mktemp("ext_repo")
    (d / ADDON_ID).symlink_to(REPO, target_is_directory=True)
    return d


@pytest.fixture(scope="session")
def addon(extension_dir):
    """The add-on registered through an extension repository, as Blender does for installed extensions."""
    import addon_utils

    prefs = bpy.context.preferences
    repo = prefs.extensions.repos.get(REPO_MODULE) if hasattr(prefs.extensions.repos, "get") else None
    if repo is None:
        prefs.extensions.repos.new(name=REPO_MODULE, module=REPO_MODULE, custom_directory=str(extension_dir), source="USER")
    mod = addon_utils.enable(ADDON_MODULE, default_set=True, handle_error=None)
    assert mod is not None, "the extension failed to register"
    bpy.context.preferences.addons[ADDON_MODULE].preferences.backend_python = _backend_python()
    yield mod
    addon_utils.disable(ADDON_MODULE, default_set=True, handle_error=None)


@pytest.fixture
def clean_scene():
    """A fresh empty scene for each test (factory settings would unregister the add-on, so empty by hand)."""
    for ob in list(bpy.data.objects):
        bpy.data.objects.remove(ob, do_unlink=True)
    for coll in (bpy.data.meshes, bpy.data.node_groups, bpy.data.materials, bpy.data.cameras, bpy.data.actions):
        for block in list(coll):
            if block.users == 0 or coll is not bpy.data.materials:
                try:
                    coll.remove(block)
                except RuntimeError:
                    pass
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, 24
    scene.render.fps = 24
    return scene


@pytest.fixture
def project(addon, clean_scene, tmp_path):
    """tmp_path/project/scene.blend, saved; the session gets an empty unsaved file afterwards."""
    import bpy

    folder = tmp_path / "project"
    folder.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(folder / "scene.blend"))
    yield folder
    bpy.ops.wm.read_homefile(use_empty=True)
