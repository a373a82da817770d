"""The demo's --out folder: a folder with someone else's files is refused untouched; a rerun replaces
only the demo's own outputs."""

import importlib.util
import subprocess
import sys
from pathlib import Path

from support.artist_files import plant_artist_files, tree_digest

REPO = Path(__file__).resolve().parents[2]


def _demo_module():
    spec = importlib.util.spec_from_file_location("splat_demo_script", REPO / "scripts" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_out_folder_with_the_artists_files_is_refused_untouched(tmp_path):
    out = tmp_path / "Documents"
    plant_artist_files(out)
    before = tree_digest(tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--out {out} already holds files the demo did not write" in proc.stderr
    assert tree_digest(tmp_path) == before


def test_a_rerun_replaces_only_the_demos_outputs(tmp_path):
    demo = _demo_module()
    out = tmp_path / "demo_out"
    assert demo.prepare_out(out) is None and (out / demo.OUT_MARKER).is_file()
    (out / "splat_jobs" / "Plant").mkdir(parents=True)
    (out / "demo.blend").write_bytes(b"old")
    artist = plant_artist_files(out)  # files put next to a demo's outputs afterwards
    assert demo.prepare_out(out) is None
    assert not (out / "demo.blend").exists() and not (out / "splat_jobs").exists()
    assert all(Path(p).read_bytes() == data for p, data in artist.items())
    legacy = tmp_path / "old_demo_out"  # written before the marker existed: only demo outputs inside
    (legacy / "splat_cache").mkdir(parents=True)
    (legacy / "preview.gif").write_bytes(b"gif")
    assert demo.prepare_out(legacy) is None and sorted(p.name for p in legacy.iterdir()) == [demo.OUT_MARKER]
