"""Write Jobs for a Farm: one folder per selected object, a manifest, and a command that really runs."""

import importlib
import importlib.util
import json
import subprocess
from pathlib import Path

import bpy
import numpy as np

from backend import protocol


def draw_panels(context):
    """The panel-drawing helper of test_register (a sibling module; importlib mode has no test packages)."""
    spec = importlib.util.spec_from_file_location("_register_helpers", Path(__file__).with_name("test_register.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.draw_panels(context)


def _mod(addon, name):
    return importlib.import_module(f"{addon.__name__}.{name}")


def _splat(name, seed, location):
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(120)
    mesh.vertices.foreach_set("co", np.random.default_rng(seed).uniform(-0.2, 0.2, 360).astype(np.float32))
    obj = bpy.data.objects.new(name, mesh)
    obj.location = location
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    assert bpy.ops.splat.convert_to_particles() == {"FINISHED"}
    return obj


def test_write_jobs_for_a_farm_writes_a_folder_per_object_and_a_runnable_command(addon, clean_scene, tmp_path,
                                                                                  monkeypatch):
    import tempfile

    farm = _mod(addon, "core.farm")
    s2j = _mod(addon, "core.scene_to_job")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # an unsaved file writes its jobs to the temp dir
    clean_scene.frame_end = 3
    rock = _splat("Rock", 0, (0.0, 0.0, 0.5))
    odd = _splat("Leaf: a/b*c", 1, (1.0, 0.0, 0.5))
    plain = bpy.data.objects.new("Plain", bpy.data.meshes.new("Plain"))  # not set up: not a farm job
    clean_scene.collection.objects.link(plain)
    for ob in (rock, odd, plain):
        ob.select_set(True)
    existing_single = bpy.ops.splat.write_job(command="simulate")  # the single Write Job stays
    assert existing_single == {"FINISHED"}

    assert bpy.ops.splat.write_farm_jobs(command="simulate") == {"FINISHED"}
    manifest = farm.manifest_path(rock, "simulate")
    assert manifest.is_file() and manifest.is_relative_to(tmp_path)
    listed = protocol.read_manifest(manifest)
    assert [label for _, label in listed] == ["Leaf: a/b*c", "Rock"]
    for (folder, label), obj in zip(listed, (odd, rock)):
        assert folder == _mod(addon, "core.job_folder").job_dir_for(obj, "simulate").resolve()
        assert folder.parent.parent == manifest.parent  # one folder per object, safe names, beside the manifest
        assert not any(c in folder.parent.name for c in '/*:')
        job = protocol.read_job(folder)
        assert job.label == label and job.command == "simulate" and job.simulation["n_frames"] == 3
        assert len(protocol.load_npz(job.scene_path)["positions"]) == 120
    # Folders are stored relative to the manifest, so the tree can move to shared storage.
    assert all(not e["folder"].startswith("/") for e in json.loads(manifest.read_text())["jobs"])

    command = clean_scene.splat_farm_command
    assert "-m backend batch" in command and str(manifest) in command
    assert rock.splat_physics.last_message.startswith("2 job(s)") and command in rock.splat_physics.last_message
    log = draw_panels(bpy.context)
    assert ("prop", "splat_farm_command") in log and ("operator", "splat.write_farm_jobs") in log

    # The exact line, as a user pastes it into a shell, checks both jobs (--dry-run: no Ray started).
    proc = subprocess.run(command + " --dry-run", shell=True, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = protocol.Event.from_json(proc.stdout.strip().splitlines()[-1]).data["jobs"]
    assert [(p["job"], p["command"], p["error"]) for p in plan] == [("Leaf: a/b*c", "simulate", ""),
                                                                    ("Rock", "simulate", "")]


def test_write_jobs_for_a_farm_without_a_set_up_object_writes_nothing(addon, clean_scene, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    plain = bpy.data.objects.new("Plain", bpy.data.meshes.new("Plain"))
    clean_scene.collection.objects.link(plain)
    plain.select_set(True)
    bpy.context.view_layer.objects.active = plain
    assert not bpy.ops.splat.write_farm_jobs.poll()
    assert list(tmp_path.iterdir()) == []


def test_install_backend_offers_the_ray_extra(addon):
    ops = _mod(addon, "operators.backend_ops")
    prefs = bpy.context.preferences.addons[addon.__name__].preferences
    assert "install_ray" in prefs.bl_rna.properties
    prefs.install_ray = False
    assert [p.name for p in ops.requirement_files(prefs)] == ["backend.txt"]
    prefs.install_ray = True
    try:
        files = ops.requirement_files(prefs)
        assert [p.name for p in files] == ["backend.txt", "ray.txt"] and all(p.is_file() for p in files)
        assert "ray==" in files[1].read_text()
    finally:
        prefs.install_ray = False
