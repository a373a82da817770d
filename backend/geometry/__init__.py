"""Splat geometry in numpy only, shared by the add-on and the backend: splat shapes and orientations, and
the one interior-fill algorithm. May import only numpy and the contract (``backend.protocol``).
"""
