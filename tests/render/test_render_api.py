"""render_splats / render_video behaviour: SH and rotated splats, input errors, CPU safety."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from backend.render import Camera, RenderInputError, orbit_cameras, render_splats, render_video  # noqa: E402

C0 = 0.28209479177387814  # degree-0 SH basis constant


def _args(scene, **kw):
    return dict(opacities=scene["opacities"], covars=scene["covars"], **kw)


def test_sh_degree0_equals_rgb(scene_factory, camera_factory):
    s = scene_factory(60, 11, sh_bases=16)
    cam = camera_factory(32, 32)
    sh = s["sh"].clone()
    sh[:, 0] = (s["colors"] - 0.5) / C0
    a = render_splats(s["means"], camera=cam, colors=s["colors"], **_args(s))
    b = render_splats(s["means"], camera=cam, sh=sh, sh_degree=0, **_args(s))
    torch.testing.assert_close(a.rgb, b.rgb, rtol=0, atol=1e-12)
    c = render_splats(s["means"], camera=cam, sh=sh, **_args(s))  # full degree 3: view-dependent
    assert (c.rgb - a.rgb).abs().max() > 1e-3


def test_sh_rotations_undo_a_rigid_rotation(scene_factory, camera_factory):
    """Rotating splats, camera and SH frame together leaves the image unchanged."""
    s = scene_factory(80, 12, sh_bases=9)
    cam = camera_factory(40, 36)
    Q = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64))[0]
    Q = Q * torch.sign(torch.det(Q))  # a proper rotation
    means_r = s["means"] @ Q.T
    covars_r = Q @ s["covars"] @ Q.T
    M = np.eye(4)
    M[:3, :3] = Q.numpy().T
    cam_r = Camera(cam.viewmat @ M, cam.K, cam.width, cam.height, cam.near, cam.far)
    Rs = Q.expand(80, 3, 3)

    base = render_splats(s["means"], camera=cam, sh=s["sh"], **_args(s))
    turned = render_splats(means_r, camera=cam_r, sh=s["sh"], opacities=s["opacities"], covars=covars_r,
                           sh_rotations=Rs)
    torch.testing.assert_close(turned.rgb, base.rgb, rtol=0, atol=1e-9)
    torch.testing.assert_close(turned.depth, base.depth, rtol=1e-9, atol=1e-9)
    unfixed = render_splats(means_r, camera=cam_r, sh=s["sh"], opacities=s["opacities"], covars=covars_r)
    assert (unfixed.rgb - base.rgb).abs().max() > 1e-3


def test_render_video_is_a_loop_over_frames(scene_factory):
    s = scene_factory(50, 13)
    cams = orbit_cameras((0, 0, 0), 3.0, 3, 24, 20, fov_deg=50)
    T = 3
    means = torch.stack([s["means"] + 0.05 * t for t in range(T)])
    covars = torch.stack([s["covars"] * (1 + 0.1 * t) for t in range(T)])
    vid = render_video(means, cameras=cams, opacities=s["opacities"], colors=s["colors"], covars=covars,
                       background=(1, 1, 1))
    assert vid.rgb.shape == (T, 20, 24, 3) and vid.alpha.shape == (T, 20, 24, 1) and vid.depth.shape == (T, 20, 24, 1)
    for t in range(T):
        one = render_splats(means[t], camera=cams[t], opacities=s["opacities"], colors=s["colors"], covars=covars[t],
                            background=(1, 1, 1))
        assert torch.equal(vid.rgb[t], one.rgb)
    with pytest.raises(RenderInputError, match="cameras"):
        render_video(means, cameras=cams[:2], opacities=s["opacities"], colors=s["colors"], covars=covars)


def test_empty_and_invisible_scenes_give_background(camera_factory):
    cam = camera_factory(16, 12)
    z = torch.zeros(0, 3, dtype=torch.float64)
    out = render_splats(z, camera=cam, opacities=torch.zeros(0, dtype=torch.float64), colors=z,
                        covars=torch.zeros(0, 3, 3, dtype=torch.float64), background=(0.1, 0.2, 0.3))
    assert torch.allclose(out.rgb, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64).expand(12, 16, 3))
    behind = torch.tensor([[10.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    out = render_splats(behind, camera=cam, opacities=torch.ones(1, dtype=torch.float64),
                        colors=torch.ones(1, 3, dtype=torch.float64),
                        covars=torch.eye(3, dtype=torch.float64)[None] * 0.01)
    assert out.alpha.max() == 0
    out.rgb.sum().backward()
    assert torch.equal(behind.grad, torch.zeros_like(behind))


def test_degenerate_splats_give_finite_gradients(scene_factory, camera_factory):
    """Zero opacity, a splat on the camera plane (z = 0), a flat covariance: no NaN anywhere."""
    s = scene_factory(30, 15)
    cam = camera_factory(24, 24)
    eye = torch.tensor(cam.campos, dtype=torch.float64)
    right = torch.tensor(cam.viewmat[0, :3], dtype=torch.float64)
    s["means"][0] = eye + 0.5 * right  # depth exactly 0
    s["opacities"][1] = 0.0
    s["covars"][2] = torch.diag(torch.tensor([0.01, 0.0, 0.0], dtype=torch.float64))
    p = {k: v.clone().requires_grad_() for k, v in s.items()}
    out = render_splats(p["means"], camera=cam, opacities=p["opacities"], colors=p["colors"], covars=p["covars"])
    (out.rgb.sum() + out.depth.sum()).backward()
    for k in ("means", "opacities", "colors", "covars"):
        assert torch.isfinite(p[k].grad).all(), k
    assert p["means"].grad[3:].abs().sum() > 0


def test_cpu_render_never_calls_gsplat_cuda_ops(monkeypatch, scene_factory, camera_factory):
    import gsplat

    from backend.render.gsplat_private import cuda_wrapper as wrapper

    def forbidden(*a, **k):
        raise AssertionError("a gsplat CUDA op was called on the CPU path")

    for mod, names in ((gsplat, ["rasterization", "spherical_harmonics", "fully_fused_projection"]),
                       (wrapper, ["fully_fused_projection", "isect_tiles", "rasterize_to_pixels",
                                  "spherical_harmonics", "quat_scale_to_covar_preci", "_make_lazy_cuda_func"])):
        for name in names:
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, forbidden)
    s = scene_factory(40, 14, sh_bases=4)
    p = {k: v.clone().requires_grad_() for k, v in s.items()}
    out = render_splats(p["means"], camera=camera_factory(20, 20), sh=p["sh"], opacities=p["opacities"],
                        quats=p["quats"], scales=p["scales"], backend="auto")
    assert out.backend == "torch"
    out.rgb.sum().backward()
    assert p["means"].grad.abs().sum() > 0


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(means=torch.zeros(5, 2)), "means must have shape"),
        (dict(colors=None), "exactly one of colors"),
        (dict(sh=torch.zeros(5, 4, 3)), "exactly one of colors"),
        (dict(opacities=torch.full((5,), 1.5)), r"opacities must lie in \[0, 1\]"),
        (dict(opacities=torch.ones(4)), r"opacities must have shape \(5\)"),
        (dict(covars=None), "give covars"),
        (dict(quats=torch.ones(5, 4), scales=torch.ones(5, 3)), "not both"),
        (dict(means=torch.full((5, 3), float("nan"))), "NaN"),
        (dict(covars=torch.full((5, 3, 3), float("inf"))), "NaN or infinite"),
        (dict(background=(1.0, 0.0)), "background must have shape"),
        (dict(backend="vulkan"), "backend must be one of"),
        (dict(backend="gsplat"), "needs CUDA tensors"),
        (dict(colors=None, sh=torch.zeros(5, 5, 3)), "1, 4, 9 or 16 bases"),
        (dict(colors=None, sh=torch.zeros(5, 4, 3), sh_degree=2), "sh_degree must be between 0 and 1"),
        (dict(sh_rotations=torch.eye(3)), r"sh_rotations must have shape \(5, 3, 3\)"),
        (dict(camera="front"), "camera must be a backend.render.Camera"),
    ],
)
def test_bad_inputs_raise_clear_errors(change, match, camera_factory):
    args = dict(means=torch.zeros(5, 3), camera=camera_factory(8, 8), opacities=torch.full((5,), 0.5),
                colors=torch.zeros(5, 3), covars=torch.eye(3).expand(5, 3, 3) * 0.01, backend="auto")
    args.update(change)
    means = args.pop("means")
    with pytest.raises(RenderInputError, match=match):
        render_splats(means, **args)
