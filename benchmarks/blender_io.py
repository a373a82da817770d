"""Blender-side I/O benchmarks: splat import, bake writers, GN-cache playback. One JSON object per line.

    python benchmarks/blender_io.py            # 100k / 1M import, 100k points x 120 frames bakes
    python benchmarks/blender_io.py --quick    # tiny sizes (a smoke run)

Runs with any interpreter that has bpy (the main .venv or .venv-bpy50). The add-on's modules are imported
as a package through a temporary symlink (no registration needed). Caches are written to a temp folder
and deleted after each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def load_addon_package(tmp: Path):
    link = tmp / "pkg" / "splat_physics"
    link.parent.mkdir(parents=True)
    link.symlink_to(REPO, target_is_directory=True)
    sys.path.insert(0, str(link.parent))
    import importlib

    return tuple(importlib.import_module(f"splat_physics.{name}")
                 for name in ("core.splat_objects", "core.bake", "core.look", "backend.io.ply"))


def synthetic_splats(ply, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return ply.Splats(rng.uniform(-1, 1, (n, 3)), rng.normal(size=(n, 3)), rng.normal(size=(n, 45)) * 0.1,
                      rng.normal(size=n), rng.uniform(-5, -3, (n, 3)), rng.normal(size=(n, 4)),
                      normals=np.zeros((n, 3)))


class SyntheticFrame(Mapping):
    """A frame computed on access (a wave through the points), so 120 frames never sit in memory at once."""

    def __init__(self, p0: np.ndarray, frame: int):
        self.p0, self.frame, self._arrays = p0, frame, None

    def _load(self):
        if self._arrays is None:
            t = self.frame / 24.0
            pos = self.p0.copy()
            pos[:, 2] += 0.1 * np.sin(3 * self.p0[:, 0] + 4 * t)
            angle = 0.3 * np.sin(t + self.p0[:, 1])
            rot = np.stack([np.cos(angle / 2), np.sin(angle / 2), np.zeros_like(angle), np.zeros_like(angle)], 1)
            scales = np.full((len(pos), 3), 0.01, np.float32)
            self._arrays = {"positions": pos.astype(np.float32), "rotations": rot.astype(np.float32),
                            "scales": scales, "time": np.float32(t)}
        return self._arrays

    def __getitem__(self, key):
        return self._load()[key]

    def __iter__(self):
        return iter(self._load())

    def __len__(self):
        return 4

    def release(self):
        self._arrays = None

    @property
    def fingerprint(self) -> str:
        return f"synthetic:{len(self.p0)}:{self.frame}"


def bench_import(bpy, splats, ply, tmp: Path, n: int) -> None:
    path = tmp / f"import_{n}.ply"
    ply.write_splats(path, synthetic_splats(ply, n))
    size = path.stat().st_size
    for obj in list(bpy.data.objects):
        bpy.data.objects.remove(obj)
    t0 = time.perf_counter()
    obj = splats.import_splats(path, bpy.context, look=False)
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    splats.export_splats(obj, tmp / "export.ply")
    t_export = time.perf_counter() - t0
    emit(bench="import_ply", n_splats=n, sh_degree=3, file_mb=round(size / 1e6, 1),
         import_s=round(t_import, 3), export_s=round(t_export, 3))
    mesh = obj.data
    bpy.data.objects.remove(obj)
    bpy.data.meshes.remove(mesh)
    path.unlink()
    (tmp / "export.ply").unlink()


def bench_bakes(bpy, splats, bake, look, ply, tmp: Path, n: int, n_frames: int, shape_frames: int) -> None:
    blend = tmp / "bench.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    src = tmp / "bake_src.ply"
    ply.write_splats(src, synthetic_splats(ply, n, seed=1))
    obj = splats.import_splats(src, bpy.context, name="Bench")
    p0 = splats.local_positions(obj.data).copy()
    for target in ("gn_cache", "ply_sequence", "pc2", "shape_keys"):
        frames_n = shape_frames if target == "shape_keys" else n_frames
        frames = [(f, SyntheticFrame(p0, f)) for f in range(1, frames_n + 1)]
        estimate = bake.estimate_bake_size(target, n, frames_n)
        t0 = time.perf_counter()
        info = bake.bake(obj, frames, target, force=True) if target == "shape_keys" else bake.bake(obj, frames, target)
        seconds = time.perf_counter() - t0
        record = dict(bench="bake", target=target, n_points=n, n_frames=frames_n, seconds=round(seconds, 2),
                      ms_per_frame=round(1000 * seconds / frames_n, 1), bytes=info.bytes,
                      mb=round(info.bytes / 1e6, 1), estimate_mb=round(estimate / 1e6, 1))
        if info.warnings:
            record["warning"] = info.warnings[0]
        if target == "gn_cache":
            record.update(playback(bpy, obj, frames_n))
        emit(**record)
        bake.free_bake(obj)
    bpy.ops.wm.read_homefile(use_empty=True)


def playback(bpy, obj, n_frames: int) -> dict:
    """Seconds per frame change with the GN cache: points only (look off) and with the splat instances."""
    scene = bpy.context.scene
    look_mod = obj.modifiers["Splat Look"]
    out = {}
    for label, show in (("eval_points_ms", False), ("eval_splats_ms", True)):
        look_mod.show_viewport = show
        dg = bpy.context.evaluated_depsgraph_get()
        frames = list(range(2, min(n_frames, 22)))
        t0 = time.perf_counter()
        for f in frames:
            scene.frame_set(f)
            dg.update()
            obj.evaluated_get(dg)
        out[label] = round(1000 * (time.perf_counter() - t0) / len(frames), 1)
    look_mod.show_viewport = True
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    args = parser.parse_args()
    import bpy

    tmp = Path(tempfile.mkdtemp(prefix="splat_bench_io_"))
    try:
        splats, bake, look, ply = load_addon_package(tmp)
        emit(bench="env", blender=bpy.app.version_string, cpus=os.cpu_count(), quick=args.quick)
        for n in ((2_000, 20_000) if args.quick else (100_000, 1_000_000)):
            bench_import(bpy, splats, ply, tmp, n)
        if args.quick:
            bench_bakes(bpy, splats, bake, look, ply, tmp, 2_000, 12, 12)
        else:
            # shape keys store every frame in the .blend: 100k x 120 frames is 144 MB, over the warning budget
            bench_bakes(bpy, splats, bake, look, ply, tmp, 100_000, 120, 120)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
