"""`scripts/demo.py --quick` end to end: real Blender, the real backend, the add-on's own job runner.

The demo runs in a subprocess; its .blend is then opened in a fresh interpreter (no add-on) to check that
the estimated materials are stored on the splats and that the baked animation plays back.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"
SAMPLE_REGIONS = REPO / "samples" / "potted_plant_regions.json"

pytestmark = pytest.mark.slow

_CHECK_BLEND = textwrap.dedent("""
    import json, sys
    import bpy, numpy as np
    bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
    ob = next(o for o in bpy.data.objects if o.type == "MESH" and "youngs_modulus" in o.data.attributes)
    attrs = {}
    for name in ("youngs_modulus", "poisson_ratio", "density"):
        a = np.empty(len(ob.data.vertices), np.float32)
        ob.data.attributes[name].data.foreach_get("value", a)
        attrs[name] = [float(a.min()), float(a.max())]
    for m in ob.modifiers:  # the splat look instances the points: read the baked points underneath
        if m.type == "NODES" and m.node_group is not None and m.node_group.get("splat_role") == "look":
            m.show_viewport = False
    positions = {}
    for frame in (1, 8):
        bpy.context.scene.frame_set(frame)
        dg = bpy.context.evaluated_depsgraph_get()
        dg.update()
        me = ob.evaluated_get(dg).data
        co = np.empty(len(me.vertices) * 3, np.float32)
        me.vertices.foreach_get("co", co)
        positions[frame] = co.reshape(-1, 3)
    moved = np.linalg.norm(positions[8] - positions[1], axis=1)
    print("RESULT " + json.dumps({"name": ob.name, "n": len(ob.data.vertices), "attrs": attrs,
                                  "moved": moved.tolist()}))
""")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    if not PYTHON.exists():
        pytest.skip("the .venv with bpy and the backend is not set up (make env)")
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(out.parent / "blender_user"))
    proc = subprocess.run([str(PYTHON), str(REPO / "scripts" / "demo.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=str(REPO), env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, proc.stdout


def test_quick_demo_writes_every_output(demo):
    out, stdout = demo
    for name in ("demo.blend", "preview.gif", "stiffness.png", "loss.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    from PIL import Image

    with Image.open(out / "preview.gif") as gif:
        assert gif.size == (480, 270)
    with Image.open(out / "stiffness.png") as img:
        assert img.size == (480, 270)


def test_summary_names_the_prior_and_every_region(demo):
    _out, stdout = demo
    assert re.search(r"^Prior used: (svd|reference) \(.+\)$", stdout, re.M), stdout[-3000:]
    for region in ("stem", "leaves", "flower"):
        assert re.search(rf"^\s+{region}\s+estimated\s+\S+ Pa\s+true\s+\S+ Pa\s+error\s+[-+]\d", stdout, re.M), region
    assert "Time per stage:" in stdout
    # The 24 fps scene fits a clip filmed at 60 fps, compared at the clip's own frame times.
    assert re.search(r"Sampling the motion at 16 frames at 60 fps .*reference clip \(read from the file\)", stdout)
    sway = re.search(r"^Sway of the poked flower \(16 frames at 24 fps, gravity (?:on|off)\): peak ([\d.]+) mm at frame (\d+), "
                     r"back to (\d+) % of it at frame (\d+)$", stdout, re.M)
    assert sway, stdout[-3000:]
    assert float(sway.group(1)) > 1.0  # the poke visibly moves the flower (the full demo also checks the return)


def test_saved_blend_has_materials_and_a_baked_animation_that_plays(demo, tmp_path):
    out, _ = demo
    script = tmp_path / "check_blend.py"
    script.write_text(_CHECK_BLEND)
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "fresh_user"))
    proc = subprocess.run([str(PYTHON), str(script), str(out / "demo.blend")], capture_output=True, text=True,
                          timeout=300, cwd=str(tmp_path), env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][7:])
    regions = json.loads(SAMPLE_REGIONS.read_text())
    assert result["n"] == regions["splat_count"]
    lo_E, hi_E = result["attrs"]["youngs_modulus"]
    assert 0 < lo_E <= hi_E and hi_E < 1e9
    assert 0 < result["attrs"]["poisson_ratio"][0] and result["attrs"]["poisson_ratio"][1] < 0.5
    assert result["attrs"]["density"][0] > 0

    import numpy as np

    moved = np.asarray(result["moved"])
    pot = slice(*regions["regions"]["pot"]["ranges"][0])
    stem = slice(*regions["regions"]["stem"]["ranges"][0])
    assert moved[stem].max() > 1e-3  # the poked stem sways by more than a millimetre ...
    assert moved[pot].max() < 1e-4  # ... while the anchored pot stays put
