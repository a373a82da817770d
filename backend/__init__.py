"""Physics backend: MPM simulation, splat rendering and video-prior material estimation.

This package runs in its own interpreter (torch, warp-lang, gsplat, diffusers). It never
imports bpy. Importing `backend` itself stays light (stdlib only) so that the Blender side
can import the contract (`backend.protocol`) and the numpy-only I/O (`backend.io`) without
pulling in the compute stack.
"""

__version__ = "0.1.0"
