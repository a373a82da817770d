"""Stop rules of the material estimation.

``PlateauMonitor`` ("plateau", the default) stops when the run has arrived: over the last `window`
iterations, a straight line fitted to the loss and to each tracked log E changes them by less than
`tolerance` (relative), and every log E of the window lies within half the tolerance of that line.
A line fit is not fooled by an optimiser swinging through the minimum, as a max/min spread over a
few iterations is at a turning point: the swing shows as a distance from the line.

``ConvergenceMonitor`` ("decade", DreamPhysics' rule, with a tolerance): stop when every tracked value
(e.g. the 5th percentile, median and 95th percentile of E) stayed within `tolerance_decades` orders of
magnitude (max/min <= 10**tolerance) over the last `window` iterations. The paper's rule is window=3,
one decade; the estimate's iteration count bounds the run.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


class ConvergenceMonitor:
    """update(values) after each iteration; returns True when the loop should stop (see .reason)."""

    def __init__(self, window: int = 3, tolerance_decades: float = 1.0, min_iterations: int | None = None):
        if window < 2:
            raise ValueError("the convergence window needs at least 2 iterations")
        if not tolerance_decades > 0:
            raise ValueError("tolerance_decades must be positive")
        self.window = int(window)
        self.tolerance = float(tolerance_decades)
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
        self.reason = f"running (iteration {self.iteration}); {detail}"
        return False


def trend(values) -> tuple[float, float]:
    """(change along the least-squares line from the first to the last value, largest distance from it)."""
    y = np.asarray(values, np.float64)
    t = np.arange(len(y), dtype=np.float64)
    slope, intercept = np.polyfit(t, y, 1)
    residual = y - (intercept + slope * t)
    return float(slope * (len(y) - 1)), float(np.max(np.abs(residual)))


class PlateauMonitor:
    """update(loss, log_E) after each learning iteration; True when the run has arrived (see .reason).

    log_E: a mapping of tracked natural-log stiffness values (e.g. per-region medians or percentiles).
    A change of 0.02 in ln E is a 2 % change of E. The loss is compared with the range it spanned over
    the run (highest minus lowest): near a minimum the loss itself approaches a floor set by what the
    simulation cannot match, so its change relative to its own level stays large long after E arrived.
    """

    def __init__(self, window: int = 6, tolerance: float = 0.02, min_iterations: int = 10):
        if window < 3:
            raise ValueError("the plateau window needs at least 3 iterations (a line through 2 points has no scatter)")
        if not tolerance > 0:
            raise ValueError("the plateau tolerance must be positive")
        self.window, self.tolerance = int(window), float(tolerance)
        self.min_iterations = max(int(min_iterations), self.window)
        self.losses: list[float] = []
        self.log_E: list[dict] = []
        self.converged = False
        self.reason = "not started"

    @property
    def iteration(self) -> int:
        return len(self.losses)

    def measures(self) -> dict:
        """name -> (relative change along the trend, relative scatter about it) over the last window."""
        loss = self.losses[-self.window:]
        level = max(max(self.losses) - min(self.losses), 1e-12 * max(map(abs, self.losses)), 1e-30)
        change, _ = trend(loss)
        out = {"loss": (abs(change) / level, 0.0)}  # a stochastic prior's loss is noisy: its trend only
        for key in self.log_E[-1]:
            change, scatter = trend([r[key] for r in self.log_E[-self.window:]])
            out[key] = (abs(change), scatter)
        return out

    def update(self, loss: float, log_E: Mapping) -> bool:
        self.losses.append(float(loss))
        self.log_E.append({str(k): float(v) for k, v in log_E.items()})
        if self.iteration < self.min_iterations:
            self.reason = f"running (iteration {self.iteration}); waiting for {self.min_iterations} iterations"
            return False
        measures = self.measures()
        worst = max(measures, key=lambda k: max(measures[k][0], 2.0 * measures[k][1]))
        change, scatter = measures[worst]
        detail = (f"over the last {self.window} iterations the trend of {worst} changed by {100 * change:.2g} % "
                  f"(largest distance from it {100 * scatter:.2g} %); tolerance {100 * self.tolerance:.2g} %")
        if change <= self.tolerance and 2.0 * scatter <= self.tolerance:
            self.converged = True
            self.reason = f"arrived at iteration {self.iteration}: {detail}"
            return True
        self.reason = f"running (iteration {self.iteration}); {detail}"
        return False


class DecadeRule:
    """The paper's rule behind the plateau rule's interface: E percentiles within `tolerance_decades`
    over the last 3 iterations (the loss is not looked at), after `min_iterations`."""

    def __init__(self, tolerance_decades: float = 1.0, min_iterations: int = 3):
        self.monitor = ConvergenceMonitor(window=3, tolerance_decades=tolerance_decades, min_iterations=min_iterations)

    @property
    def reason(self) -> str:
        return self.monitor.reason

    def update(self, loss: float, log_E: Mapping) -> bool:
        return self.monitor.update({k: math.exp(v) for k, v in log_E.items()})


def make_stop_rule(est: Mapping):
    """The stop rule an estimate job's settings ask for (protocol.STOP_RULES)."""
    if est["stop_rule"] == "decade":
        return DecadeRule(float(est["tolerance_decades"]), int(est["min_iterations"]))
    return PlateauMonitor(int(est["stop_window"]), float(est["stop_tolerance"]), int(est["min_iterations"]))
