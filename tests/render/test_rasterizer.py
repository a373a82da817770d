"""The CPU tile compositor against the brute-force dense reference and finite differences."""

import pytest

torch = pytest.importorskip("torch")

from backend.render import render_splats  # noqa: E402
from backend.render.composite import T_MIN  # noqa: E402


BG = (0.2, 0.5, 0.9)


def _render(scene, cam, backend, shape="covars", **kw):
    if shape == "covars":
        shape_args = {"covars": scene["covars"]}
    else:
        shape_args = {"quats": scene["quats"], "scales": scene["scales"]}
    return render_splats(scene["means"], camera=cam, opacities=scene["opacities"], colors=scene.get("colors"),
                         background=BG, backend=backend, **shape_args, **kw)


def _compare(a, b, tol):
    assert (a.rgb - b.rgb).abs().max().item() <= tol
    assert (a.alpha - b.alpha).abs().max().item() <= tol
    seen = b.alpha[..., 0] > 0.01  # expected depth is only meaningful where something was drawn
    rel = ((a.depth - b.depth).abs()[..., 0][seen] / b.depth[..., 0][seen]).max().item()
    assert rel <= tol


@pytest.mark.parametrize(
    "n,width,height,seed,tile_size,dtype",
    [
        (50, 32, 32, 0, 8, torch.float32),
        (120, 45, 38, 1, 16, torch.float32),  # image not a multiple of the tile size
        (300, 64, 48, 2, 8, torch.float32),
        (200, 57, 64, 3, 4, torch.float64),
        (300, 64, 64, 4, 16, torch.float64),
    ],
)
def test_tiles_match_dense_reference(n, width, height, seed, tile_size, dtype, scene_factory, camera_factory):
    scene = scene_factory(n, seed, dtype)
    cam = camera_factory(width, height)
    fast = _render(scene, cam, "torch", tile_size=tile_size)
    ref = _render(scene, cam, "reference")
    assert ref.alpha.max() > 0.5 and (ref.alpha < 0.01).any()  # the scene covers part of the image
    _compare(fast, ref, 1e-4)


def test_opaque_stacks_stop_like_gsplat(scene_factory, camera_factory):
    scene = scene_factory(60, 5, torch.float64, kind="opaque")
    cam = camera_factory(40, 40)
    fast = _render(scene, cam, "torch", tile_size=8)
    ref = _render(scene, cam, "reference")
    # pixels behind several near-opaque splats stop once T would drop to 1e-4 ...
    assert (1.0 - ref.alpha).min() < 10 * T_MIN
    _compare(fast, ref, 1e-9)


def test_quats_scales_equal_covariances(scene_factory, camera_factory):
    scene = scene_factory(80, 6, torch.float64)
    cam = camera_factory(40, 32)
    a = _render(scene, cam, "torch", shape="covars")
    b = _render(scene, cam, "torch", shape="quats")
    assert torch.allclose(a.rgb, b.rgb, atol=1e-10) and torch.allclose(a.alpha, b.alpha, atol=1e-10)


@pytest.mark.parametrize("shape", ["covars", "quats"])
def test_gradients_match_reference_autograd(shape, scene_factory, camera_factory):
    """Analytic backward of the tile compositor == plain autograd through the dense reference."""
    scene = scene_factory(150, 7, torch.float64)
    cam = camera_factory(48, 40)
    names = ["means", "opacities", "colors"] + (["covars"] if shape == "covars" else ["quats", "scales"])
    g = torch.Generator().manual_seed(0)
    wts = [torch.rand(40, 48, c, generator=g, dtype=torch.float64) for c in (3, 1, 1)]
    grads = []
    for backend in ("torch", "reference"):
        p = {k: v.clone().requires_grad_(k in names) for k, v in scene.items()}
        out = _render(p, cam, backend, shape=shape, tile_size=8)
        loss = (out.rgb * wts[0]).sum() + (out.alpha * wts[1]).sum() + (out.depth * wts[2]).sum()
        grads.append(torch.autograd.grad(loss, [p[k] for k in names]))
    for name, a, b in zip(names, *grads):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9 * b.abs().max().item(), msg=name)


def _fd_check(loss_fn, tensors, n_probe=10, eps=1e-6, seed=0):
    """Compare autograd gradients with central differences on a few random entries of each tensor."""
    params = {k: v.clone().requires_grad_() for k, v in tensors.items()}
    grads = torch.autograd.grad(loss_fn(params), list(params.values()))
    g = torch.Generator().manual_seed(seed)
    for (name, base), grad in zip(tensors.items(), grads):
        flat = grad.reshape(-1)
        # probe entries with a real gradient plus a few random ones
        order = torch.argsort(flat.abs(), descending=True)[: n_probe // 2]
        rand = torch.randint(0, flat.numel(), (n_probe - len(order),), generator=g)
        for i in torch.cat([order, rand]).tolist():
            plus, minus = base.clone(), base.clone()
            plus.view(-1)[i] += eps
            minus.view(-1)[i] -= eps
            with torch.no_grad():
                fd = (loss_fn({**tensors, name: plus}) - loss_fn({**tensors, name: minus})) / (2 * eps)
            assert fd.item() == pytest.approx(flat[i].item(), rel=1e-5, abs=1e-6 * (1 + grad.abs().max().item())), (
                f"{name}[{i}]: finite difference {fd.item()} vs autograd {flat[i].item()}")


@pytest.mark.parametrize("shape", ["covars", "quats"])
def test_gradients_match_finite_differences(shape, scene_factory, camera_factory):
    scene = scene_factory(40, 8, torch.float64)
    cam = camera_factory(32, 28)
    g = torch.Generator().manual_seed(1)
    wts = [torch.rand(28, 32, c, generator=g, dtype=torch.float64) for c in (3, 1, 1)]
    names = ["means", "opacities", "colors"] + (["covars"] if shape == "covars" else ["quats", "scales"])
    fixed = {k: v for k, v in scene.items() if k not in names}

    def loss(p):
        out = _render({**fixed, **p}, cam, "torch", shape=shape, tile_size=8)
        return (out.rgb * wts[0]).sum() + (out.alpha * wts[1]).sum() + (out.depth * wts[2]).sum()

    _fd_check(loss, {k: scene[k] for k in names})


def test_sh_gradients_match_finite_differences(scene_factory, camera_factory):
    scene = scene_factory(30, 9, torch.float64, sh_bases=16)
    cam = camera_factory(24, 24)
    R = torch.linalg.qr(torch.randn(30, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64))[0]

    def loss(p):
        out = render_splats(p["means"], camera=cam, opacities=scene["opacities"], sh=p["sh"], sh_degree=3,
                            covars=scene["covars"], sh_rotations=R, backend="torch", tile_size=8)
        return (out.rgb * torch.linspace(0, 1, 3, dtype=torch.float64)).sum()

    _fd_check(loss, {"sh": scene["sh"], "means": scene["means"]})


def test_large_render_uses_replay_path(monkeypatch, scene_factory, camera_factory):
    """Past the cache budget the backward replays the blocks; gradients must not change."""
    import backend.render.composite as comp

    scene = scene_factory(100, 10, torch.float64)
    cam = camera_factory(40, 40)
    grads = []
    for budget in (comp.CACHE_BYTES, 0):
        monkeypatch.setattr(comp, "CACHE_BYTES", budget)
        p = {k: v.clone().requires_grad_() for k, v in scene.items()}
        out = _render(p, cam, "torch", tile_size=8)
        grads.append(torch.autograd.grad(out.rgb.sum() + out.alpha.sum(), [p["means"], p["covars"], p["opacities"]]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
