"""Blender-side logic (bpy, numpy, stdlib). Operators and panels are thin UI over these modules.

core/runner.py and core/jobs.py hold no bpy at all, so they are tested in plain Python too.
"""
