"""Three orthogonal learnable feature planes (xy, xz, yz), sampled bilinearly per particle."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

# Which two coordinates of a [-1,1]^3 position index each plane (grid_sample order: x -> W, y -> H).
PLANE_AXES = ((0, 1), (0, 2), (1, 2))


class Triplane(nn.Module):
    """Feature planes of shape (3, C, R, R).

    combine="concat" gives (N, 3C) features (keeps which plane a feature came from);
    combine="sum" gives (N, C).
    """

    def __init__(self, channels: int, resolution: int, combine: str = "concat", init_std: float = 0.1):
        super().__init__()
        if combine not in ("concat", "sum"):
            raise ValueError(f"combine must be 'concat' or 'sum', got {combine!r}")
        if channels < 1 or resolution < 2:
            raise ValueError("triplane needs channels >= 1 and resolution >= 2")
        self.combine = combine
        self.planes = nn.Parameter(init_std * torch.randn(3, channels, resolution, resolution))

    @property
    def out_features(self) -> int:
        c = self.planes.shape[1]
        return 3 * c if self.combine == "concat" else c

    def forward(self, unit_pos: torch.Tensor) -> torch.Tensor:
        """unit_pos (N,3) in [-1,1]^3 -> features (N, out_features)."""
        grid = torch.stack([unit_pos[:, list(ax)] for ax in PLANE_AXES])  # (3, N, 2)
        feats = F.grid_sample(self.planes, grid.unsqueeze(1), mode="bilinear",
                              padding_mode="border", align_corners=True)  # (3, C, 1, N)
        feats = feats.squeeze(2).permute(2, 0, 1)  # (N, 3, C)
        return feats.flatten(1) if self.combine == "concat" else feats.sum(1)

    def tv(self) -> torch.Tensor:
        """Total variation (mean squared difference of neighbouring texels) over all planes."""
        p = self.planes
        return (p[..., 1:, :] - p[..., :-1, :]).square().mean() + (p[..., 1:] - p[..., :-1]).square().mean()
