"""Tile binning: which Gaussians touch which 16x16 tile, front to back.

Mirrors gsplat's `isect_tiles`: a Gaussian covers the tiles its screen box
(mean +- radius) overlaps; inside each tile Gaussians are ordered by camera depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class TileBins:
    tile_size: int
    tiles_x: int
    tiles_y: int
    gaussian_ids: torch.Tensor  # (n_isect,) int64, grouped by tile, each group sorted by depth
    offsets: torch.Tensor  # (n_tiles,) int64 start of each tile's group
    counts: torch.Tensor  # (n_tiles,) int64 group sizes

    @property
    def n_tiles(self) -> int:
        return self.tiles_x * self.tiles_y


@torch.no_grad()
def bin_gaussians(
    means2d: torch.Tensor,
    radii: torch.Tensor,
    depths: torch.Tensor,
    visible: torch.Tensor,
    width: int,
    height: int,
    tile_size: int = 16,
) -> TileBins:
    device = means2d.device
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles = tiles_x * tiles_y
    ids = torch.nonzero(visible).squeeze(1)
    ids = ids.index_select(0, torch.argsort(depths.index_select(0, ids)))  # front to back
    m = means2d.index_select(0, ids).double() / tile_size
    r = radii.index_select(0, ids).double() / tile_size
    x0 = torch.floor(m[:, 0] - r[:, 0]).clamp(0, tiles_x).long()
    x1 = torch.ceil(m[:, 0] + r[:, 0]).clamp(0, tiles_x).long()
    y0 = torch.floor(m[:, 1] - r[:, 1]).clamp(0, tiles_y).long()
    y1 = torch.ceil(m[:, 1] + r[:, 1]).clamp(0, tiles_y).long()
    nx, ny = x1 - x0, y1 - y0
    per_gauss = nx * ny
    total = int(per_gauss.sum())

    # one row per (Gaussian, tile) intersection, Gaussians front to back
    owner = torch.repeat_interleave(torch.arange(len(ids), device=device), per_gauss)
    start = torch.cumsum(per_gauss, 0) - per_gauss
    local = (torch.arange(total, device=device) - start.index_select(0, owner)).double()
    nx_o = nx.double().index_select(0, owner)
    row = torch.floor(local / nx_o)  # float64 is exact here and much faster than integer division
    tile = (y0 * tiles_x + x0).index_select(0, owner) + (row * (tiles_x - nx_o) + local).long()

    # a stable sort by tile keeps depth order inside each tile (small keys sort faster)
    key_dtype = torch.int16 if n_tiles <= torch.iinfo(torch.int16).max else torch.int32
    _, order = torch.sort(tile.to(key_dtype), stable=True)
    gaussian_ids = ids.index_select(0, owner.index_select(0, order))
    counts = torch.bincount(tile, minlength=n_tiles)
    offsets = torch.cumsum(counts, 0) - counts
    return TileBins(tile_size, tiles_x, tiles_y, gaussian_ids, offsets, counts)


def tiles_to_image(x: torch.Tensor, bins: TileBins, width: int, height: int) -> torch.Tensor:
    """(n_tiles, ts*ts, D) -> (height, width, D), cropping the partial tiles at the border."""
    ts, D = bins.tile_size, x.shape[-1]
    img = x.reshape(bins.tiles_y, bins.tiles_x, ts, ts, D).permute(0, 2, 1, 3, 4)
    return img.reshape(bins.tiles_y * ts, bins.tiles_x * ts, D)[:height, :width]


def image_to_tiles(img: torch.Tensor, bins: TileBins) -> torch.Tensor:
    """(height, width, D) -> (n_tiles, ts*ts, D), zero-padding the partial tiles."""
    ts = bins.tile_size
    H, W, D = img.shape
    pad = img.new_zeros(bins.tiles_y * ts, bins.tiles_x * ts, D)
    pad[:H, :W] = img
    return pad.reshape(bins.tiles_y, ts, bins.tiles_x, ts, D).permute(0, 2, 1, 3, 4).reshape(bins.n_tiles, ts * ts, D)
