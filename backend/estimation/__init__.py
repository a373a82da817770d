"""The parts of material estimation that are not simulation or rendering: supervision (what judges a
rendered video), stop rules, the log-E ladder, the frame times estimation compares at, and the budget.

``budget`` is numpy-only and imported by the add-on; the other modules load torch only inside functions.
May import the contract, ``io``, ``mpm``, ``render``, ``prior`` and ``field``; never ``jobs`` or ``app``.
"""
