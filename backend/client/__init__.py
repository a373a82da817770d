"""The add-on's side of running the backend: start ``python -m backend``, follow its JSON lines, cancel.

Standard library and the contract (``backend.protocol``) only: it runs inside Blender's Python, which
imports it as the add-on's ``backend.client``, and in plain Python (tests, scripts) as ``backend.client``.
"""
