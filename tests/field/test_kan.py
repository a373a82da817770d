"""KAN layer: B-spline bases (partition of unity, the cardinal cubic), gradients."""
import torch

from backend.field.kan import KANLayer, bspline_bases, uniform_knots


def cardinal_cubic(v):
    """The uniform cubic B-spline on [0, 4] in closed form."""
    out = torch.zeros_like(v)
    for lo, poly in ((0, lambda w: w ** 3 / 6), (1, lambda w: (-3 * w ** 3 + 12 * w ** 2 - 12 * w + 4) / 6),
                     (2, lambda w: (3 * w ** 3 - 24 * w ** 2 + 60 * w - 44) / 6), (3, lambda w: (4 - w) ** 3 / 6)):
        m = (v >= lo) & (v < lo + 1)
        out[m] = poly(v[m])
    return out


def test_bases_partition_of_unity_inside_grid():
    knots = uniform_knots(5, 3, (-1.0, 1.0))
    assert knots.numel() == 5 + 2 * 3 + 1
    x = torch.linspace(-1, 1, 2001).reshape(-1, 1)
    b = bspline_bases(x, knots, 3)
    assert b.shape == (2001, 1, 8)
    assert torch.allclose(b.sum(-1), torch.ones(2001, 1), atol=1e-6)
    assert b.min() >= -1e-7


def test_bases_match_closed_form_cubic():
    knots = uniform_knots(5, 3, (-1.0, 1.0))
    x = torch.linspace(-0.999, 0.999, 777).reshape(-1, 1)
    b = bspline_bases(x, knots, 3)[:, 0]
    s = (x[:, 0] - knots[0]) / (knots[1] - knots[0])
    ref = torch.stack([cardinal_cubic(s - j) for j in range(8)], -1)
    assert torch.allclose(b, ref, atol=1e-5)


def test_lower_orders_partition_of_unity():
    for order in (0, 1, 2):
        knots = uniform_knots(4, order, (-2.0, 3.0))
        x = torch.linspace(-2, 2.999, 301).reshape(-1, 1)
        assert torch.allclose(bspline_bases(x, knots, order).sum(-1), torch.ones(301, 1), atol=1e-6)


def test_kan_layer_formula_and_gradients():
    torch.manual_seed(0)
    layer = KANLayer(3, 2)
    x = (torch.rand(5, 3) * 1.8 - 0.9).requires_grad_()
    y = layer(x)
    b = bspline_bases(x, layer.knots, 3)
    ref = torch.einsum("ni,oi->no", torch.nn.functional.silu(x), layer.base_weight) + torch.einsum(
        "nik,oi,oik->no", b, layer.spline_scale, layer.spline_coef)
    assert torch.allclose(y, ref, atol=1e-6)
    y.sum().backward()
    for p in (layer.base_weight, layer.spline_scale, layer.spline_coef, x):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # The input gradient of the spline path agrees with a central finite difference.
    xd = x.detach().double()
    layer_d = layer.double()
    g = torch.autograd.grad(layer_d(xd.requires_grad_()).sum(), xd)[0]
    h = 1e-6
    e = torch.zeros_like(xd)
    e[2, 1] = h
    with torch.no_grad():
        fd = (layer_d(xd + e).sum() - layer_d(xd - e).sum()) / (2 * h)
    assert abs(float(g[2, 1]) - float(fd)) < 1e-6
