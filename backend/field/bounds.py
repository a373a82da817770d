"""Bounded maps from unconstrained raw values to physical parameters, and their exact inverses.

Every field outputs raw values; these maps are the only way raw becomes physical, so all
field kinds share the same bounds and the same inversion used for initialisation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class FieldConfigError(ValueError):
    """Bad field settings (ranges, kind, init arrays); the message says what to change."""


@dataclass(frozen=True)
class SigmoidRange:
    """value = lo + (hi - lo) * sigmoid(raw), optionally in log space (value = exp(...))."""

    lo: float
    hi: float
    log: bool = False

    def __post_init__(self):
        lo, hi = float(self.lo), float(self.hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise FieldConfigError(f"range ({lo}, {hi}) must be finite with low < high")
        if self.log and lo <= 0:
            raise FieldConfigError(f"a log-space range must be positive, got ({lo}, {hi})")

    @property
    def span(self):
        """(low, high) of the value in the space the sigmoid interpolates (log for log ranges)."""
        if self.log:
            return math.log(self.lo), math.log(self.hi)
        return float(self.lo), float(self.hi)

    def inner(self, raw: torch.Tensor) -> torch.Tensor:
        """raw -> the interpolated quantity (log value for log ranges)."""
        a, b = self.span
        return a + (b - a) * torch.sigmoid(raw)

    def value(self, raw: torch.Tensor) -> torch.Tensor:
        x = self.inner(raw)
        return torch.exp(x) if self.log else x

    def inverse(self, value: torch.Tensor, margin: float = 1e-6) -> torch.Tensor:
        """value -> raw. Values at or beyond the bounds are pulled `margin` (relative) inside,
        so the raw value stays finite; values strictly inside invert exactly."""
        a, b = self.span
        x = torch.log(value) if self.log else value
        u = (x - a) / (b - a)
        u = u.clamp(margin, 1.0 - margin)
        return torch.log(u) - torch.log1p(-u)

    def normalise(self, value: torch.Tensor) -> torch.Tensor:
        """value -> [0, 1] position inside the range (log for log ranges); used for fit losses."""
        a, b = self.span
        x = torch.log(value) if self.log else value
        return (x - a) / (b - a)
