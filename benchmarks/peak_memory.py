"""Peak-memory readings shared by the benchmark scripts (they run as scripts, so import this as `peak_memory`).

On CPU the figure is the growth of the resident set: the kernel's high-water mark (VmHWM) is reset
through /proc/self/clear_refs at start(), so the peak is this case's own; where that is not allowed,
getrusage's ru_maxrss growth is used. On CUDA it is the growth of torch's allocations.
"""

from __future__ import annotations

import resource


def status_kb(field: str) -> int | None:
    """A field of /proc/self/status (VmRSS, VmHWM, ...) in KiB, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak growth of the resident set (or of CUDA allocations) from start() to peak_mb()."""

    def __init__(self, device: str = "cpu"):
        self.cuda = device.startswith("cuda")

    def start(self) -> "PeakMemory":
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM := VmRSS (Linux >= 4.0)
            self.hwm = True
            self.base = status_kb("VmRSS")
        except OSError:
            self.hwm = False
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def peak_mb(self) -> float:
        if self.cuda:
            import torch

            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        peak = status_kb("VmHWM") if self.hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return (peak - self.base) / 1024.0  # KiB
