"""Convergence test of the material estimation (DreamPhysics' rule, with a tolerance).

Stop when every tracked value (e.g. the 5th percentile, median and 95th percentile of E) stayed
within `tolerance_decades` orders of magnitude (max/min <= 10**tolerance) over the last `window`
iterations; otherwise stop at `max_iterations`. The paper's rule is window=3, one decade.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def material_summary(E) -> dict:
    """The usual tracked values of a Young's modulus array: p5, median, p95 (Pa)."""
    arr = np.asarray(E.detach().cpu() if hasattr(E, "detach") else E, dtype=np.float64).ravel()
    p5, p50, p95 = np.percentile(arr, [5, 50, 95])
    return {"E_p5": float(p5), "E_median": float(p50), "E_p95": float(p95)}


class ConvergenceMonitor:
    """update(values) after each iteration; returns True when the loop should stop (see .reason)."""

    def __init__(self, window: int = 3, tolerance_decades: float = 1.0, max_iterations: int | None = None,
                 min_iterations: int | None = None):
        if window < 2:
            raise ValueError("the convergence window needs at least 2 iterations")
        if not tolerance_decades > 0:
            raise ValueError("tolerance_decades must be positive")
        self.window = int(window)
        self.tolerance = float(tolerance_decades)
        self.max_iterations = max_iterations
        self.min_iterations = self.window if min_iterations is None else max(int(min_iterations), self.window)
        self.history: list[dict] = []
        self.converged = False
        self.stopped = False
        self.reason = "not started"

    @property
    def iteration(self) -> int:
        return len(self.history)

    def spreads(self) -> dict:
        """log10(max/min) of each tracked value over the last `window` iterations."""
        recent = self.history[-self.window:]
        return {k: math.log10(max(r[k] for r in recent) / min(r[k] for r in recent)) for k in recent[0]}

    def update(self, values) -> bool:
        if isinstance(values, Mapping):
            values = {str(k): float(v) for k, v in values.items()}
        elif isinstance(values, Sequence) or hasattr(values, "__len__"):
            values = {f"value_{i}": float(v) for i, v in enumerate(values)}
        else:
            values = {"value": float(values)}
        if self.history and set(values) != set(self.history[0]):
            raise ValueError(f"tracked values changed from {sorted(self.history[0])} to {sorted(values)}")
        self.history.append(values)
        bad = [k for k, v in values.items() if not math.isfinite(v) or v <= 0]
        if bad:
            self.stopped = True
            self.reason = (f"diverged at iteration {self.iteration}: {', '.join(bad)} "
                           f"{'is' if len(bad) == 1 else 'are'} not a positive finite number")
            return True
        if self.iteration >= self.min_iterations:
            spreads = self.spreads()
            worst = max(spreads, key=spreads.get)
            if spreads[worst] <= self.tolerance:
                self.converged = self.stopped = True
                self.reason = (f"converged at iteration {self.iteration}: over the last {self.window} iterations "
                               f"every tracked value stayed within {self.tolerance:g} decade(s) "
                               f"(largest spread {spreads[worst]:.3f} decades, {worst})")
                return True
            detail = f"largest spread over the last {self.window} iterations {spreads[worst]:.3f} decades ({worst})"
        else:
            detail = f"waiting for {self.min_iterations} iterations"
        if self.max_iterations is not None and self.iteration >= self.max_iterations:
            self.stopped = True
            self.reason = f"stopped at the maximum of {self.max_iterations} iterations without converging; {detail}"
            return True
        self.reason = f"running (iteration {self.iteration}); {detail}"
        return False
