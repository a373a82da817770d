"""The estimation budget (backend/estimation/budget.py): capped sizes, the projection, the fix it suggests, and the backend
refusing a job that will not fit (exit 2 with the fix) before any iteration runs."""

import numpy as np
import pytest

from backend import protocol
from backend.estimation import budget
from backend.protocol import ExitCode
from backend.render.camera import Camera, intrinsics_from_fov, look_at
from support import estimate_scenes as es


def test_capped_size_keeps_the_aspect_in_multiples_of_8_and_never_grows():
    assert budget.capped_size(1920, 1080, 256) == (256, 144)
    assert budget.capped_size(1080, 1920, 256) == (144, 256)
    assert budget.capped_size(200, 100, 256) == (200, 100)
    w, h = budget.capped_size(1000, 563, 300)
    assert w % 8 == 0 and h % 8 == 0 and abs(w / h - 1000 / 563) < 0.05
    assert budget.effective_long_side(0, "cpu", "svd") == 256 and budget.effective_long_side(0, "cuda", "svd") == 1024
    assert budget.effective_long_side(0, "cuda", "modelscope") == 256
    assert budget.effective_long_side(640, "cpu", "svd") == 640
    assert budget.effective_max_particles(0, "cpu") == 3000 and budget.effective_max_particles(777, "cpu") == 777


def _project(n=3000, w=256, h=144, frames=8, spf=50, prior="reference", device="cpu"):
    return budget.project(n_particles=n, width=w, height=h, frames=frames, substeps_per_frame=spf, n_grid=64,
                          prior=prior, device=device)


def test_projection_grows_with_every_size_and_a_video_model_adds_its_weights():
    base = _project()
    for bigger in (_project(n=30000), _project(w=1024, h=576), _project(frames=25), _project(spf=500)):
        assert bigger.seconds > base.seconds and bigger.memory_mb >= base.memory_mb
    assert _project(prior="svd").memory_mb > base.memory_mb + 8000  # SVD-xt's fp32 weights on a CPU
    assert _project(prior="svd", device="cuda").memory_mb < _project(prior="svd").memory_mb  # fp16 there


def test_the_suggested_fix_fits_and_halving_it_once_more_is_not_needed():
    limit = 2000.0
    def at(n, w, h):
        return _project(n=n, w=w, h=h)
    assert budget.refusal(at(3000, 2048, 1152), limit, "fix") is not None
    n_fit, long_fit = budget.what_fits(at, 3000, 2048, 1152, limit)
    w, h = budget.capped_size(2048, 1152, long_fit)
    assert budget.refusal(at(3000, w, h), limit, "") is None
    w2, h2 = budget.capped_size(2048, 1152, long_fit * 2)
    assert budget.refusal(at(3000, w2, h2), limit, "") is not None  # the largest size that fits
    text = budget.fix_text(n_fit, long_fit, "Max particles", "Resolution", "panel")
    assert f"Resolution to {long_fit} px" in text and text.endswith("(panel).")


def test_substeps_agree_with_the_solvers_cfl_plan():
    from backend.mpm import SimConfig
    from backend.mpm.grid import p_wave_speed, plan_substeps

    for E, dx, fps in ((1e5, 0.0069, 24.0), (2e11, 0.01, 30.0), (5e3, 0.3, 24.0)):
        c = float(p_wave_speed(E, 0.3, 1000.0))
        want = plan_substeps(SimConfig(fps=fps), dx, c, 0.0).n
        assert budget.substeps_per_frame(E, 0.3, 1000.0, dx, fps) == want


@pytest.mark.slow
def test_the_backend_refuses_a_job_that_will_not_fit_with_the_fix(tmp_path):
    from backend.io.video import write_frames_png

    ref = tmp_path / "ref"
    write_frames_png(np.zeros((4, 32, 32, 3), np.uint8), ref, fps=24.0)  # right length, aspect and a rate: it would run
    size = 2048
    cam = Camera(look_at([0.28, -0.3, 0.16], [0, 0, 0.05]), intrinsics_from_fov(size, size, 38), size, size)
    scene = es.block_scene(5e3, n_side=4)
    sim, est = es.settings(frames=4, groups=1, reference_video=str(ref), camera=cam.to_dict(), memory_limit_mb=1500)
    result = es.run_job(tmp_path / "job", "estimate", scene, sim, est)
    assert result.exit_code == ExitCode.BAD_INPUT, result.message
    assert "run out of memory" in result.message and "the camera's long side (Resolution) to" in result.message
    assert not any(e.stage == "estimate" for e in result.events if e.kind == "progress")
    assert not (tmp_path / "job" / protocol.OUT_DIR / protocol.MATERIALS_FILE).exists()
