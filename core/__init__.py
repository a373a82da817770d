"""Blender-side logic (bpy, numpy, stdlib). Operators and panels are thin UI over these modules.

The bpy-free code that starts and follows backend runs lives in backend/client/ (see core/README.md).
"""
