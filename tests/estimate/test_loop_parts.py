"""The estimation loop's small parts, each against a known answer."""

import numpy as np
import torch

from backend.jobs import estimate
from backend.render.camera import Camera, intrinsics_from_fov, look_at


def _field():
    from backend.field import make_field

    return make_field("global", torch.rand(20, 3), init={"E": torch.full((20,), 1e4)})


def test_non_finite_gradient_entries_are_zeroed_and_the_rest_kept():
    field = _field()
    p = next(field.parameters())
    p.grad = torch.full_like(p, float("nan"))
    assert estimate._clean_gradients(field) == (p.numel(), False)  # nothing finite: nothing to step with
    assert torch.all(p.grad == 0)
    p.grad = torch.ones_like(p)
    assert estimate._clean_gradients(field) == (0, True)
    p.grad[0] = float("inf")
    assert estimate._clean_gradients(field) == (1, p.numel() > 1)  # the finite rest is kept


def test_best_keeps_the_lowest_loss_point_and_its_parameters():
    field = _field()
    best = estimate.Best()
    for it, (loss, raw) in enumerate([(0.5, 0.1), (0.2, 0.7), (float("nan"), 0.9), (0.3, -0.4)], start=1):
        with torch.no_grad():
            field.raw_values.fill_(raw)
        best.consider({"iteration": it, "loss": loss, "E_p50": 1.0}, field)
    assert (best.iteration, best.loss) == (2, 0.2)
    assert torch.all(best.state["raw_values"] == 0.7)


def test_momentum_restart_clears_the_running_direction_only():
    field = _field()
    opt = torch.optim.Adam(field.parameters(), lr=0.1)
    field.raw_values.grad = torch.ones_like(field.raw_values)
    opt.step()
    estimate.restart_momentum(opt)
    state = opt.state[field.raw_values]
    assert torch.all(state["exp_avg"] == 0) and torch.all(state["exp_avg_sq"] > 0)


def test_cosine_learning_rate_starts_at_the_base_and_ends_at_the_floor():
    assert estimate.cosine_lr(0.1, 0, 20) == 0.1
    assert abs(estimate.cosine_lr(0.1, 19, 20) - 0.01) < 1e-12
    lrs = [estimate.cosine_lr(0.1, i, 20) for i in range(20)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_voxel_subsample_keeps_about_the_target_and_spreads_over_the_object():
    pts = np.random.default_rng(0).random((20000, 3)).astype(np.float32)
    idx = estimate.voxel_subsample(pts, 1000)
    assert 800 <= len(idx) <= 1000 and len(set(idx)) == len(idx)
    sub = pts[idx]
    assert np.all(sub.min(0) < 0.1) and np.all(sub.max(0) > 0.9)


def test_orbit_keeps_the_distance_to_the_pivot_and_turns_by_the_angle():
    cam = Camera(look_at([1.0, 0.0, 0.5], [0, 0, 0]), intrinsics_from_fov(32, 32, 40), 32, 32)
    pivot = np.zeros(3)
    cams = estimate.orbit_about(cam, pivot, 5, 90.0)
    centres = [np.linalg.inv(c.viewmat)[:3, 3] for c in cams]
    assert np.allclose([np.linalg.norm(c - pivot) for c in centres], np.linalg.norm(centres[0]))
    assert np.allclose(centres[-1], [0.0, 1.0, 0.5], atol=1e-9)
    # the pivot stays where it was in every image
    px = np.array([c.project(pivot[None])[0][0] for c in cams])
    assert np.allclose(px, px[0], atol=1e-6)


def test_rest_frame_is_rendered_once_and_equals_a_fresh_render(monkeypatch):
    """Frame 0 (the rest pose) does not depend on the materials: rendered on the first call only."""
    import os

    from backend import protocol, render
    from backend.jobs.estimate import prepare_scene, simulate_and_render
    from backend.jobctl import Reporter
    from backend.estimation.supervision import first_frame

    rng = np.random.default_rng(0)
    pos = (rng.random((300, 3)) * 0.1).astype(np.float32)
    arrays = {"positions": pos, "scale": np.full((300, 3), np.log(0.01), np.float32),
              "rotation": np.tile(np.float32([1, 0, 0, 0]), (300, 1)), "opacity": np.full(300, 3.0, np.float32),
              "f_dc": rng.standard_normal((300, 3)).astype(np.float32)}
    camera = Camera(look_at([0.3, -0.3, 0.2], [0.05, 0.05, 0.05]), intrinsics_from_fov(32, 32, 40), 32, 32)
    job = protocol.default_job("estimate", simulation={"n_grid": 16},
                               estimate={"camera": camera.to_dict(), "frames_per_group": 3})
    scene = prepare_scene(arrays, job["simulation"], job["estimate"], Reporter(open(os.devnull, "w")), "cpu")
    n = scene.particles.n_visible
    pos = torch.as_tensor(scene.particles.positions)[None].repeat(2, 1, 1) + 0.002
    cov = torch.as_tensor(scene.particles.cov0)[None].repeat(2, 1, 1, 1)
    calls = []
    real = render.render_splats
    monkeypatch.setattr(render, "render_splats", lambda *a, **k: calls.append(1) or real(*a, **k))
    mats = {k: torch.zeros(n) for k in ("log_E", "nu", "rho")}
    first = simulate_and_render(lambda *_: (pos, cov), mats, scene, 3)
    again = simulate_and_render(lambda *_: (pos, cov), mats, scene, 3)
    assert len(calls) == 3 + 2  # the rest frame once, the simulated frames every time
    assert torch.equal(first, again) and torch.equal(first[0], first_frame(scene))
    assert not torch.equal(first[0], first[1])
