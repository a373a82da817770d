"""gsplat's CUDA rasteriser against the torch compositor: same images, same gradients.

Needs a CUDA device; skipped elsewhere.
"""

import math

import pytest

torch = pytest.importorskip("torch")

from backend.render import render_splats  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU: gsplat's rasteriser is CUDA-only "
    "(the CPU compositor is tested against the dense reference instead)",
)


def _psnr(a, b):
    mse = ((a.float() - b.float()) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def _to(scene, device, dtype=torch.float32):
    return {k: v.to(device=device, dtype=dtype) for k, v in scene.items()}


def _render_both(scene, cam, names, shape, sh_rotations=None):
    outs, grads = [], []
    g = torch.Generator().manual_seed(0)
    wts = [torch.rand(cam.height, cam.width, c, generator=g).cuda() for c in (3, 1)]
    for backend in ("gsplat", "torch"):
        p = {k: v.clone().requires_grad_(k in names) for k, v in scene.items()}
        colour = {"sh": p["sh"]} if "sh" in p else {"colors": p["colors"]}
        geom = {"covars": p["covars"]} if shape == "covars" else {"quats": p["quats"], "scales": p["scales"]}
        out = render_splats(p["means"], camera=cam, opacities=p["opacities"], background=(0.3, 0.6, 0.1),
                            sh_rotations=sh_rotations, backend=backend, **colour, **geom)
        assert out.backend == backend
        loss = (out.rgb * wts[0]).sum() + (out.alpha * wts[1]).sum()
        grads.append(torch.autograd.grad(loss, [p[k] for k in names]))
        outs.append(out)
    return outs, grads


def _assert_grads_close(names, grads):
    for name, a, b in zip(names, *grads):
        # (covariance gradients sit on the upper triangle only in both backends)
        a, b = a.flatten().double(), b.flatten().double()
        cos = torch.dot(a, b) / (a.norm() * b.norm() + 1e-30)
        rel = (a - b).norm() / (b.norm() + 1e-30)
        assert cos > 0.995 and rel < 0.05, f"{name}: cosine {cos:.4f}, relative error {rel:.4f}"


@pytest.mark.parametrize("shape", ["covars", "quats"])
def test_gsplat_matches_torch_compositor(shape, scene_factory, camera_factory):
    scene = _to(scene_factory(300, 21), "cuda")
    cam = camera_factory(96, 80)
    names = ["means", "opacities", "colors"] + (["covars"] if shape == "covars" else ["quats", "scales"])
    (gs, tc), grads = _render_both(scene, cam, names, shape)
    assert _psnr(gs.rgb, tc.rgb) > 40
    assert _psnr(gs.alpha, tc.alpha) > 40
    seen = tc.alpha[..., 0] > 0.05
    assert ((gs.depth - tc.depth).abs()[..., 0][seen] / tc.depth[..., 0][seen]).median() < 1e-3
    _assert_grads_close(names, grads)


def test_gsplat_sh_with_rotations_matches_torch(scene_factory, camera_factory):
    scene = scene_factory(200, 22, sh_bases=16)
    del scene["colors"]
    scene = _to(scene, "cuda")
    R = torch.linalg.qr(torch.randn(200, 3, 3, generator=torch.Generator().manual_seed(1)))[0].cuda()
    names = ["means", "sh", "opacities"]
    (gs, tc), grads = _render_both(scene, camera_factory(64, 64), names, "covars", sh_rotations=R)
    assert _psnr(gs.rgb, tc.rgb) > 40
    _assert_grads_close(names, grads)


def test_auto_picks_gsplat_on_cuda(scene_factory, camera_factory):
    s = _to(scene_factory(20, 23), "cuda")
    out = render_splats(s["means"], camera=camera_factory(16, 16), opacities=s["opacities"], colors=s["colors"],
                        covars=s["covars"])
    assert out.backend == "gsplat" and out.rgb.is_cuda
