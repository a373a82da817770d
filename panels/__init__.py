"""Sidebar panels. Each module exposes register()/unregister()."""
