"""Physics backend: MPM simulation, splat rendering and video-prior material estimation.

This package runs in its own interpreter (torch, warp-lang, gsplat, diffusers). It never
imports bpy. Importing `backend` itself stays light (stdlib only) so that the Blender side
can import the contract (`backend.protocol`) and the numpy-only I/O (`backend.io`) without
pulling in the compute stack.

Layers, each importing only its own and those before it (tests/foundation/test_import_graph.py):
  schema, io.atomic, render.camera  what the contract is built from: setting specs, atomic writes, cameras
  protocol, jobctl                  the contract with the add-on and the progress/cancel plumbing
  io, geometry                      files and splat geometry (numpy only; the add-on imports them too)
  mpm, render, prior, field         simulator, renderer, video priors, material fields
  estimation                        supervision, stop rules, ladder, frame times, budget
  jobs                              simulate, estimate, preview and what they share
  app                               the command line: run, batch, doctor, install, demo
"""

__version__ = "0.1.0"
