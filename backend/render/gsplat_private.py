"""The one importer of gsplat's private names (written against gsplat 1.5.3).

gsplat keeps its pure-torch reference implementations (`gsplat.cuda._torch_impl`) and its CUDA
extension loader private, so they may change without notice in any release. Everything else in
the product takes them from here, under our names; tests/render/test_gsplat_private.py checks their
signatures and what they compute, so an upgrade that breaks them fails there, in one place.
Public gsplat API (`gsplat.rasterization`, `gsplat.spherical_harmonics`) is imported directly.
"""

from __future__ import annotations

from gsplat.cuda import _wrapper as cuda_wrapper  # the CUDA ops' Python wrappers (tests forbid them on CPU)
from gsplat.cuda._torch_impl import _fully_fused_projection as project_reference
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci as quat_scale_to_covar_preci
from gsplat.cuda._torch_impl import _quat_to_rotmat as quat_to_rotmat
from gsplat.cuda._torch_impl import _spherical_harmonics as spherical_harmonics_reference

__all__ = ["cuda_extension", "cuda_wrapper", "project_reference", "quat_scale_to_covar_preci", "quat_to_rotmat",
           "spherical_harmonics_reference"]


def cuda_extension():
    """gsplat's compiled CUDA extension (None when it did not build); importing it builds or loads it,
    which is slow and needs CUDA, so this is only called where CUDA is known to be there."""
    from gsplat.cuda._backend import _C

    return _C
