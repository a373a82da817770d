"""The backend's commands: ``python -m backend run | batch | doctor | install | demo``.

The top layer: it may import everything in ``backend``; nothing in ``backend`` imports it.
"""
