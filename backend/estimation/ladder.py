"""A global look before the descent: the loss on a coarse ladder of log E values, forward only.

Gradient descent finds the nearest minimum; a stiff object swinging back through its rest shape can
look "less wrong" at 10x the true E than at 5x, so a start on the wrong side of that bump climbs away.
The ladder tries every rung of a geometric E grid over the allowed range (a simulation and a render
each, no tape) for the whole object, then, region by region with the others held at their best, the
rungs within a decade of the whole object's best; the descent starts from the best rung of each region.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.cluster.vq import kmeans2
from scipy.spatial import cKDTree

# Rungs stay this factor inside the range: on its edge the field's sigmoid is saturated (no gradient).
EDGE = 1.05
# Rungs per decade when ladder_rungs is None (auto): half a decade apart, so the best rung lies within
# a quarter decade (a factor 1.8) of the minimum when the basin is at least that wide.
RUNGS_PER_DECADE = 2
# Region passes look this many decades either side of the whole object's best rung. The parts of one
# object seldom differ by more, and the stiff rungs are the costly ones: a rung's substeps grow as sqrt(E),
# so on the demo's range [1e4, 3e7] the top rung alone costs as much as the five softest together.
REGION_SPAN_DECADES = 1.0


def rungs(E_range, count: int | None) -> np.ndarray:
    """``count`` E values spaced evenly in log over the range (auto: RUNGS_PER_DECADE per decade)."""
    lo, hi = float(E_range[0]) * EDGE, float(E_range[1]) / EDGE
    if count is None:
        count = max(2, 1 + round(RUNGS_PER_DECADE * math.log10(hi / lo)))
    return np.geomspace(lo, hi, int(count))


def spatial_regions(positions: np.ndarray, count: int, free: np.ndarray, seed: int = 0,
                    held: np.ndarray | None = None) -> np.ndarray:
    """Region label per point: k-means on the rest positions of the free (not locked) points that move.

    Locked points get -1. Held points (anchored: they do not move, so the video says nothing about them)
    are left out of the clustering and join the region of their nearest moving point: the clamp follows
    the material it holds. Empty clusters are dropped, so there may be fewer than ``count`` regions."""
    labels = np.full(len(positions), -1, np.int64)
    held = np.zeros(len(positions), bool) if held is None else np.asarray(held, bool)
    moving = free & ~held
    if not moving.any():
        moving, held = free, np.zeros_like(held)
    pts = np.asarray(positions, np.float64)[moving]
    if count <= 1 or len(pts) < 2 * count:
        labels[free] = 0
        return labels
    _, found = kmeans2(pts, count, minit="++", seed=np.random.default_rng(seed))
    labels[moving] = np.unique(found, return_inverse=True)[1]
    follow = free & held
    if follow.any():
        labels[follow] = labels[moving][cKDTree(pts).query(np.asarray(positions, np.float64)[follow])[1]]
    return labels


@dataclass
class LadderResult:
    rungs: list
    regions: int
    # {"pass": "all" | "region k", "E": Pa, "loss": float | None (failed), "reused": True (the whole-object try)}
    tries: list = field(default_factory=list)
    start: list = field(default_factory=list)  # chosen E per region (Pa)
    E: np.ndarray | None = None  # per point, the descent's start

    def to_json(self) -> dict:
        return {"rungs": self.rungs, "regions": self.regions, "tries": self.tries, "start_E": self.start}


def climb(evaluate: Callable[[np.ndarray], float], E0: np.ndarray, labels: np.ndarray, values: np.ndarray,
          on_try: Callable[[int, int, dict], None] | None = None, mapper: Callable = map) -> LadderResult:
    """Try every rung for all free points (label >= 0) at once, then per region with the others at their best.

    evaluate(E per point) -> loss (inf where the simulation failed). Points labelled -1 keep E0.
    mapper(evaluate, trials): the losses of a pass's trials in order (they are independent: a thread pool's
    map may run them side by side); on_try still reports them one by one, in order.
    """
    n_regions = int(labels.max()) + 1 if (labels >= 0).any() else 0
    result = LadderResult([float(v) for v in values], n_regions)
    total = len(values) + (n_regions * len(values) if n_regions > 1 else 0)  # at most; the region passes are shorter

    def attempts(name: str, trials: list, rung_values: list, reused: dict | None = None) -> list[float]:
        """The losses of a pass's trials, in order. A trial None is not run: it is `reused`, the whole
        object's try at that rung ({"loss": float, "row": its row})."""
        computed = mapper(evaluate, [t for t in trials if t is not None])
        losses = []
        for trial, value in zip(trials, rung_values):
            if trial is None:
                losses.append(reused["loss"])
                result.tries.append({"pass": name, "E": float(value), "loss": reused["row"]["loss"], "reused": True})
                continue
            loss = float(next(computed))
            row = {"pass": name, "E": float(value), "loss": loss if math.isfinite(loss) else None}
            result.tries.append(row)
            if on_try:
                on_try(len(result.tries), total, row)
            losses.append(loss)
        return losses

    free = labels >= 0
    losses = attempts("all", [np.where(free, v, E0) for v in values], list(values))
    if not np.isfinite(losses).any():  # every rung failed: keep the scene's own values
        result.E = E0
        return result
    best = int(np.argmin(losses))
    chosen = [values[best]] * max(n_regions, 1)
    if n_regions > 1:
        near = [k for k, v in enumerate(values) if abs(math.log10(v / values[best])) <= REGION_SPAN_DECADES + 1e-9]
        total = len(values) + n_regions * len(near)
        whole = {"loss": losses[best], "row": result.tries[best]}
        for r in range(n_regions):
            trials = []
            for k in near:
                if k == best and all(c == values[best] for c in chosen):  # already tried: the whole object
                    trials.append(None)
                    continue
                trial = np.array(chosen)[labels.clip(0)]
                trial[labels == r] = values[k]
                trials.append(np.where(free, trial, E0))
            region_losses = attempts(f"region {r}", trials, [values[k] for k in near], whole)
            chosen[r] = values[near[int(np.argmin(region_losses))]]
    result.start = [float(v) for v in chosen]
    result.E = np.where(free, np.array(chosen)[labels.clip(0)], E0)
    return result
