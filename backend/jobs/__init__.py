"""The jobs a job folder can ask for (simulate, estimate, preview) and what they share: the scene's
particles, the compute device and the human-facing report.

May import the contract, ``io``, ``geometry``, ``mpm``, ``render``, ``prior``, ``field`` and ``estimation``;
imported only by ``app`` (and by tests and benchmarks).
"""
