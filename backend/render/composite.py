"""Front-to-back alpha compositing of projected Gaussians over tiles, with an analytic backward.

Same rules as gsplat's CUDA rasteriser:
    sigma = 0.5 (A dx^2 + C dy^2) + B dx dy,  dx = mean_x - (j + 0.5)
    alpha = min(0.999, opacity * exp(-sigma)), skipped when alpha < 1/255
    a pixel stops (exclusively) at the first Gaussian that would take T to <= 1e-4.
(gsplat also skips sigma < 0, which for a positive-definite conic only happens through
rounding at a Gaussian's very centre; we do not reproduce that artefact.)

Vectorised form. All tiles go together, K Gaussians at a time, as dense (tiles, K, pixels)
blocks; inside a block, transmittance is a cumulative product of (1 - alpha) carried across
blocks per pixel. T only decreases, so "stopped" is exactly "T after this Gaussian <= 1e-4",
and the cumprod form is exact. Tiles whose pixels have all stopped leave later blocks.

Cheap per-pixel work, because on a CPU every pass over (tiles, K, pixels) costs the same
whatever it computes, and boolean tensors cost several times more than arithmetic:
- the exponent log(opacity) - sigma is a quadratic in the pixel offset from the tile centre,
  so one matrix product of per-(tile, Gaussian) coefficients (.., 6) with the pixel monomials
  [1, x, y, x^2, xy, y^2] (6, pixels) gives it for the whole block;
- cut-offs are `torch.threshold` (keep x > t, else 0), never masks;
- with Tz = T_after where T_after > 1e-4, else 0 (a prefix along K), the weight is
  w = alpha T_before = alpha / (1 - alpha) * Tz, zero exactly after the stop;
- alpha is composited as a fourth (fifth with depth) colour channel equal to 1.

Backward. With u_k = g . c_k (g the output gradient, alpha channel included) and S_k the
sum of w_j u_j over j > k, d L / d alpha_k = (T_after_k u_k - S_k) / (1 - alpha_k); it is zero
after the stop on its own because Tz and S both vanish there. The chain to the Gaussians'
means, conics and opacities goes through the exponent's 6 coefficients, whose gradients are
pixel moments of dL/dexponent: one more matrix product. The forward keeps alpha and Tz
per block when they fit in CACHE_BYTES; otherwise the backward replays the blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.autograd.function import once_differentiable

from .tiles import TileBins, image_to_tiles, tiles_to_image

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
BLOCK_ELEMENTS = 1 << 18  # tiles*K*pixels per block: keeps the working set in cache
CACHE_BYTES = 512 << 20  # keep forward blocks for the backward up to this size, else replay
_LOG_ZERO = -1e30  # exponent of padding entries: exp() gives exactly 0


def _below(x: float, dtype: torch.dtype) -> float:
    """Largest value of `dtype` below x: threshold(v, _below(x)) keeps exactly v >= x."""
    t = torch.tensor(x, dtype=dtype)
    return float(torch.nextafter(t, torch.tensor(-float("inf"), dtype=dtype)))


@dataclass
class _Plan:
    """The blocks the forward pass ran (tile ids, Gaussian ids), replayed by the backward pass."""

    bins: TileBins
    width: int
    height: int
    blocks: list = field(default_factory=list)
    cache: list | None = None  # per block (alpha, Tz), when kept


def _gather_block(bins: TileBins, tiles: torch.Tensor, start: int, k: int, pad_id: int) -> torch.Tensor:
    j = torch.arange(start, start + k, device=tiles.device)
    idx = bins.offsets[tiles][:, None] + j[None, :]
    valid = j[None, :] < bins.counts[tiles][:, None]
    idx = idx.clamp_max(max(len(bins.gaussian_ids) - 1, 0))
    ids = bins.gaussian_ids.index_select(0, idx.reshape(-1)).reshape(idx.shape)
    return torch.where(valid, ids, torch.full_like(idx, pad_id))


class _Frame:
    """Per-render constants: padded Gaussian arrays, pixel monomials, tile centres."""

    def __init__(self, means2d, conics, opacities, colors, bins: TileBins):
        dt, dev = means2d.dtype, means2d.device
        ts = bins.tile_size
        self.pad = means2d.shape[0]
        self.m2d = torch.cat([means2d, means2d.new_zeros(1, 2)])
        self.con = torch.cat([conics, conics.new_zeros(1, 3)])
        self.opac = torch.cat([opacities, opacities.new_ones(1)])
        self.log_opac = torch.cat([torch.log(opacities), opacities.new_full((1,), _LOG_ZERO)])
        ones = colors.new_ones(colors.shape[0] + 1, 1)
        self.col = torch.cat([torch.cat([colors, colors.new_zeros(1, colors.shape[1])]), ones], dim=1)
        p = torch.arange(ts * ts, device=dev)
        x = (p % ts).to(dt) + 0.5 - 0.5 * ts  # pixel centre minus tile centre
        y = (p // ts).to(dt) + 0.5 - 0.5 * ts
        self.monomials = torch.stack([torch.ones_like(x), x, y, x * x, x * y, y * y])  # (6, P)
        t = torch.arange(bins.n_tiles, device=dev)
        self.centre = torch.stack([(t % bins.tiles_x).to(dt), (t // bins.tiles_x).to(dt)], -1) * ts + 0.5 * ts
        self.alpha_min = _below(ALPHA_MIN, dt)

    def gather_col(self, g):
        return self.col.index_select(0, g.reshape(-1)).reshape(*g.shape, -1)

    def exponent_coefs(self, tiles, g):
        n, k = g.shape
        flat = g.reshape(-1)
        mx, my = (self.m2d.index_select(0, flat).reshape(n, k, 2) - self.centre[tiles][:, None, :]).unbind(-1)
        A, B, C = self.con.index_select(0, flat).reshape(n, k, 3).unbind(-1)
        ux, uy = A * mx + B * my, B * mx + C * my
        c0 = self.log_opac.index_select(0, flat).reshape(n, k) - 0.5 * (mx * ux + my * uy)
        # stacked along a leading axis (a cheap copy); the matmul takes the transpose as is
        return torch.stack([c0, ux, uy, -0.5 * A, -B, -0.5 * C]).reshape(6, n * k).T  # (n K, 6)

    def block_alpha(self, tiles, g):
        """alpha (n, K, P) after the 0.999 clamp and the 1/255 cut."""
        n, k = g.shape
        expo = (self.exponent_coefs(tiles, g) @ self.monomials).reshape(n, k, -1)
        return torch.threshold(torch.exp(expo).clamp_max_(ALPHA_MAX), self.alpha_min, 0.0)


def _transmit(alpha: torch.Tensor, T_prev: torch.Tensor):
    """(1 - alpha, Tz, T after the block's last Gaussian) for a block, given T before it."""
    one_minus = 1.0 - alpha
    T_after = torch.cumprod(one_minus, dim=1).mul_(T_prev[:, None, :])
    return one_minus, torch.threshold(T_after, T_MIN, 0.0), T_after[:, -1]


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, bins, width, height):
        fr = _Frame(means2d, conics, opacities, colors, bins)
        n_tiles, P = bins.n_tiles, bins.tile_size**2
        Dx = fr.col.shape[1]
        acc = means2d.new_zeros(n_tiles, P, Dx)
        T = means2d.new_ones(n_tiles, P)
        plan = _Plan(bins, width, height)
        keep = any(ctx.needs_input_grad[:4]) and int(bins.counts.sum()) * P * 2 * means2d.element_size() <= CACHE_BYTES
        plan.cache = [] if keep else None

        start, k_max = 0, int(bins.counts.max()) if n_tiles else 0
        while start < k_max:
            tiles = torch.nonzero((bins.counts > start) & (T.amax(1) > T_MIN)).squeeze(1)
            if len(tiles) == 0:
                break
            k = max(4, min(256, BLOCK_ELEMENTS // (len(tiles) * P)))
            g = _gather_block(bins, tiles, start, k, fr.pad)
            alpha = fr.block_alpha(tiles, g)
            one_minus, Tz, T[tiles] = _transmit(alpha, T[tiles])
            w = alpha.div_(one_minus).mul_(Tz) if not keep else alpha / one_minus * Tz
            acc[tiles] += torch.bmm(w.transpose(1, 2), fr.gather_col(g))
            plan.blocks.append((tiles, g))
            if keep:
                plan.cache.append((alpha, Tz))
            start += k

        ctx.plan = plan
        ctx.save_for_backward(means2d, conics, opacities, colors, acc)
        out = tiles_to_image(acc, bins, width, height)
        return out[..., :-1], out[..., -1:]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_alpha):
        means2d, conics, opacities, colors, acc = ctx.saved_tensors
        plan: _Plan = ctx.plan
        bins = plan.bins
        fr = _Frame(means2d, conics, opacities, colors, bins)
        n_tiles, P, Dx = acc.shape
        H, W = plan.height, plan.width
        g_img = torch.cat([
            grad_out if grad_out is not None else acc.new_zeros(H, W, Dx - 1),
            grad_alpha if grad_alpha is not None else acc.new_zeros(H, W, 1),
        ], dim=-1)
        g_tiles = image_to_tiles(g_img, bins)  # (n_tiles, P, Dx)
        q = (g_tiles * acc).sum(-1)  # g . out per pixel = sum over all Gaussians of w u

        v_coef = []  # per block d L / d exponent coefficients (n, K, 6)
        if not plan.blocks:
            return (torch.zeros_like(means2d), torch.zeros_like(conics), torch.zeros_like(opacities),
                    torch.zeros_like(colors), None, None, None)
        v_col = torch.zeros_like(fr.col)
        T = acc.new_ones(n_tiles, P)
        U = acc.new_zeros(n_tiles, P)  # running sum of w u over earlier blocks
        for b, (tiles, g) in enumerate(plan.blocks):
            if plan.cache is not None:
                alpha, Tz = plan.cache[b]
                one_minus = 1.0 - alpha
            else:
                alpha = fr.block_alpha(tiles, g)
                one_minus, Tz, T[tiles] = _transmit(alpha, T[tiles])
            w = alpha / one_minus * Tz
            g_t = g_tiles.index_select(0, tiles)
            u = torch.bmm(fr.gather_col(g), g_t.transpose(1, 2))  # (n, K, P)
            cum = torch.cumsum(w * u, dim=1)
            U_t = U[tiles]
            U[tiles] = U_t + cum[:, -1]
            # (Tz u - S) / (1 - alpha), with S = q - U_before - cum
            v_alpha = torch.addcmul(cum.add_((U_t - q[tiles])[:, None, :]), Tz, u).div_(one_minus)
            # d alpha / d exponent = alpha where alpha is neither cut nor clamped
            v_expo = v_alpha.mul_(torch.threshold(-alpha, -ALPHA_MAX, 0.0)).neg_()
            n, k = g.shape
            v_coef.append((v_expo.reshape(n * k, P) @ fr.monomials.T).reshape(n, k, 6))
            v_col.index_add_(0, g.reshape(-1), torch.bmm(w, g_t).reshape(n * k, Dx))

        plan.cache = None  # free it; a second backward (retain_graph) replays instead
        # chain the coefficient gradients to per-Gaussian means, conics, opacities (autograd on entry-sized tensors)
        tiles = torch.cat([t[:, None].expand(g.shape).reshape(-1) for t, g in plan.blocks])
        g = torch.cat([g.reshape(-1) for _, g in plan.blocks])
        vc = torch.cat([v.reshape(-1, 6) for v in v_coef])
        with torch.enable_grad():
            m2d = fr.m2d.detach().requires_grad_()
            con = fr.con.detach().requires_grad_()
            mx, my = (m2d.index_select(0, g) - fr.centre.index_select(0, tiles)).unbind(-1)
            A, B, C = con.index_select(0, g).unbind(-1)
            ux, uy = A * mx + B * my, B * mx + C * my
            coefs = torch.stack([-0.5 * (mx * ux + my * uy), ux, uy, -0.5 * A, -B, -0.5 * C], -1)
            v_m2d, v_con = torch.autograd.grad(coefs, (m2d, con), vc)
        # d c0 / d log(opacity) = 1; Gaussians never composited (opacity may be 0) get exactly 0
        v_opac = torch.zeros_like(fr.opac).index_add_(0, g, vc[:, 0]) / fr.opac.clamp_min(1e-30)
        pad = fr.pad
        return v_m2d[:pad], v_con[:pad], v_opac[:pad], v_col[:pad, :-1], None, None, None


def composite(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    bins: TileBins,
    width: int,
    height: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite N projected Gaussians; returns sum_k w_k c_k (H, W, D) and sum_k w_k (H, W, 1)."""
    return _Composite.apply(means2d, conics, opacities, colors, bins, width, height)
