"""Operators: thin wrappers over core/. Each module exposes register()/unregister()."""
