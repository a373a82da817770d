"""Choosing the compute device, with the messages an artist needs when the choice is impossible."""

from __future__ import annotations

from ..protocol import MissingResource


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
