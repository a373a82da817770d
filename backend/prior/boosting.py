"""Frame boosting (DreamPhysics): supervise M*T rendered frames at the cost of M clips of T frames.

Frames I_0 .. I_(M*T-1) split into M interleaved groups {I_i, I_(i+M), I_(i+2M), ...}, each a clip
of T frames spanning the whole motion at a coarser frame step; the loss is the mean over groups
(`backend.estimation.supervision.Supervision.loss`).
Every group is scored with the prior's cached conditioning (for SVD, the first rendered frame
I_0); MDS's static clip for a group is that group's own first frame repeated.
"""
from __future__ import annotations

from .errors import PriorConfigError


def interleaved_groups(n_frames: int, groups: int) -> list[list[int]]:
    """Frame indices of the M interleaved groups: [[0, M, 2M, ...], [1, M+1, ...], ...]."""
    if groups < 1:
        raise PriorConfigError(f"frame boosting needs at least 1 group, got {groups}")
    if n_frames % groups:
        raise PriorConfigError(f"{n_frames} rendered frames do not split into {groups} equal groups; "
                               f"render a multiple of {groups} frames")
    if n_frames // groups < 2:
        raise PriorConfigError(f"{groups} groups of {n_frames} frames leave fewer than 2 frames per group")
    return [list(range(i, n_frames, groups)) for i in range(groups)]
