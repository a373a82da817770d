"""Choosing the compute device, with the messages an artist needs when the choice is impossible."""

from __future__ import annotations

from ..protocol import CLIP_PRIORS, MissingResource


def cuda_available() -> bool:
    import torch  # only when the job does not say "cpu": a CPU bake never loads torch

    return torch.cuda.is_available()


def resolve_device(requested: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'. 'cuda' without a GPU is a MissingResource."""
    if requested == "cpu":
        return "cpu"
    has_cuda = cuda_available()
    if requested == "cuda" and not has_cuda:
        raise MissingResource(
            "No CUDA GPU is visible to the backend. Choose the CPU device in the add-on preferences "
            "(baking works there; material estimation with a video model is much slower) or check the GPU driver."
        )
    return "cuda" if has_cuda else "cpu"


def warp_device(device: str) -> str:
    return "cuda:0" if device == "cuda" else "cpu"


# Estimation without a video model runs torch on small tensors (a render of a few hundred pixels a side, an
# image loss) between the simulation's warp launches. On a CPU, torch's OpenMP pool then costs more in
# wake-ups than it gains and takes cores from the simulation's threads: one torch thread is faster
# (benchmarks/estimate.py --cases reference, 2 cores: 0.60 s -> 0.51 s per iteration, CPU 0.74 s -> 0.63 s).
# A video model's convolutions do use every core, so those keep torch's own choice.
def set_estimate_threads(device: str, prior: str) -> int:
    """Set torch's CPU threads for an estimation with this prior; returns the count in use."""
    import torch

    if device == "cpu" and prior in CLIP_PRIORS:
        torch.set_num_threads(1)
    return torch.get_num_threads()


# The ladder's rungs are independent forward runs. An object too small to split over threads (one simulation
# thread, see backend/mpm/threads.py) leaves the other cores idle, so rungs run side by side, one per core, each
# on its own simulator; a handful of rungs per pass makes more workers than this wait for the slowest.
MAX_LADDER_WORKERS = 4


def ladder_workers(device: str, prior: str, sim_threads: int) -> int:
    """Rungs the ladder runs at once: one per usable core on the CPU when each rollout runs on one thread and the
    loss draws no noise (a clip prior: the rungs share no random generator), else 1."""
    from ..mpm.threads import usable_cores

    if device != "cpu" or prior not in CLIP_PRIORS or sim_threads > 1:
        return 1
    return max(1, min(usable_cores(), MAX_LADDER_WORKERS))
