"""Errors raised by the MPM simulator."""

from __future__ import annotations


class SimulationDiverged(RuntimeError):
    """The simulation produced non-finite values (NaN/inf).

    Attributes:
        frame: index of the frame being computed when it happened (0 = first frame).
        substep: substep index inside that frame where the first non-finite value appeared.
        hint: what the user can change.
    """

    def __init__(self, frame: int, substep: int, message: str = ""):
        self.frame = int(frame)
        self.substep = int(substep)
        self.hint = (
            "Try a smaller substep (lower substep_dt or cfl, or raise max_substeps_per_frame), "
            "a lower Young's modulus range, or a finer grid (larger n_grid)."
        )
        detail = f" {message.strip()}" if message else ""
        super().__init__(
            f"Simulation diverged (NaN/inf) at frame {self.frame}, substep {self.substep}.{detail} {self.hint}"
        )
