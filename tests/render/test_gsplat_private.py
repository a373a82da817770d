"""gsplat's private names, which backend/render/gsplat_private.py alone imports: their signatures and
what they compute for us, so a gsplat upgrade that changes them fails here and nowhere else."""

import ast
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.io.sh import SH_C0, basis
from backend.render import gsplat_private as gp

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("fn,params", [
    (gp.project_reference, ["means", "covars", "viewmats", "Ks", "width", "height", "eps2d", "near_plane",
                            "far_plane", "calc_compensations", "camera_model"]),
    (gp.quat_scale_to_covar_preci, ["quats", "scales", "compute_covar", "compute_preci", "triu"]),
    (gp.quat_to_rotmat, ["quats"]),
    (gp.spherical_harmonics_reference, ["degrees_to_use", "dirs", "coeffs"]),
])
def test_signatures_are_what_we_call(fn, params):
    assert list(inspect.signature(fn).parameters) == params


def test_the_cuda_ops_the_cpu_test_forbids_exist():
    for name in ("fully_fused_projection", "isect_tiles", "rasterize_to_pixels", "spherical_harmonics",
                 "quat_scale_to_covar_preci"):
        assert callable(getattr(gp.cuda_wrapper, name)), name


def _quarter_turn_about_z():
    return torch.tensor([[math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]], dtype=torch.float64)  # wxyz


def test_quaternions_turn_and_scale_as_wxyz():
    q = _quarter_turn_about_z()
    R = gp.quat_to_rotmat(q)[0]
    assert torch.allclose(R, torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64), atol=1e-12)
    covar, preci = gp.quat_scale_to_covar_preci(q, torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64))
    assert torch.allclose(covar[0], torch.diag(torch.tensor([4.0, 1.0, 9.0], dtype=torch.float64)), atol=1e-12)
    assert torch.allclose(preci[0] @ covar[0], torch.eye(3, dtype=torch.float64), atol=1e-12)


def test_projection_is_the_pinhole_ewa_projection():
    """A round Gaussian of variance s2 at depth z: centre f x / z + c, screen variance (f / z)^2 s2 + eps2d."""
    f, c, z, s2, eps2d = 100.0, 32.0, 5.0, 0.01, 0.3
    means = torch.tensor([[0.0, 0.0, z], [1.0, -0.5, z]], dtype=torch.float64)
    covars = (s2 * torch.eye(3, dtype=torch.float64)).expand(2, 3, 3)
    K = torch.tensor([[[f, 0, c], [0, f, c], [0, 0, 1]]], dtype=torch.float64)
    radii, means2d, depths, conics, _ = gp.project_reference(means, covars, torch.eye(4, dtype=torch.float64)[None],
                                                             K, 64, 64, eps2d=eps2d)
    assert torch.allclose(means2d[0], torch.tensor([[c, c], [c + f / z, c - 0.5 * f / z]], dtype=torch.float64))
    assert torch.allclose(depths[0], torch.full((2,), z, dtype=torch.float64))
    var = (f / z) ** 2 * s2 + eps2d
    assert torch.allclose(conics[0, 0], torch.tensor([1 / var, 0.0, 1 / var], dtype=torch.float64), rtol=1e-9)
    assert (radii[0] > 0).all()


def test_spherical_harmonics_match_the_add_ons_bases():
    """Degree 0-3 colours agree with backend.io.sh, the 3DGS bases the Blender side uses."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(7, 3, generator=g, dtype=torch.float64), dim=-1)
    coeffs = torch.randn(7, 16, 3, generator=g, dtype=torch.float64)
    for degree in range(4):
        k = (degree + 1) ** 2
        got = gp.spherical_harmonics_reference(degree, dirs, coeffs[:, :k])
        want = SH_C0 * coeffs[:, 0].numpy() + np.einsum("nk,nkc->nc", basis(dirs.numpy(), degree), coeffs[:, 1:k].numpy())
        np.testing.assert_allclose(got.numpy(), want, atol=1e-12, err_msg=f"degree {degree}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat's CUDA extension needs a CUDA device")
def test_the_cuda_extension_loads():
    assert gp.cuda_extension() is not None


def _private_gsplat_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("gsplat"):
            names = [node.module + "." + a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("gsplat")]
        else:
            continue
        for name in names:
            if any(part.startswith("_") for part in name.split(".")):
                yield f"{path.relative_to(REPO)}:{node.lineno} imports {name}"


def test_only_the_boundary_module_imports_gsplat_private_names():
    boundary = REPO / "backend" / "render" / "gsplat_private.py"
    files = [p for d in ("backend", "benchmarks", "scripts", "tests") for p in (REPO / d).rglob("*.py") if p != boundary]
    offenders = [hit for p in files for hit in _private_gsplat_imports(p)]
    assert not offenders, "import these from backend.render.gsplat_private:\n" + "\n".join(offenders)
    assert list(_private_gsplat_imports(boundary))  # the boundary itself does
