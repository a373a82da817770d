"""File I/O shared by the backend and the Blender side (numpy + standard library only).

Only the PLY module is re-exported here. Video I/O (`backend.io.video`) needs imageio and
PIL, which Blender's Python lacks, so import it explicitly where it is needed.
"""

from .ply import (
    SH_C0,
    PlyData,
    PlyError,
    Splats,
    read_ply,
    read_splats,
    sh_degree_from_rest_count,
    splat_property_names,
    splats_from_ply,
    splats_to_ply,
    write_ply,
    write_splats,
)

__all__ = [
    "SH_C0",
    "PlyData",
    "PlyError",
    "Splats",
    "read_ply",
    "read_splats",
    "sh_degree_from_rest_count",
    "splat_property_names",
    "splats_from_ply",
    "splats_to_ply",
    "write_ply",
    "write_splats",
]
