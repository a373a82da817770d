"""Forward substeps on several CPU threads: the existing kernels, launched on slabs.

warp runs a CPU kernel on the calling thread and releases the GIL while it runs, so T Python
threads that each launch a kernel on a share of the work use T cores. Its CPU atomics are plain
read-add-writes, so no two threads may scatter into the same array:

* P2G: the particles are kept sorted by grid cell, so particle slabs [n t / T, n (t + 1) / T) are
  slabs of space. Slab t scatters into its own copy of the grid (slab 0 into the real one).
* Reduction + grid update: the node box is cut into T slabs along x (contiguous in the node
  layout); each thread adds the private grids into the real one on its nodes, zeroes them, and
  runs the grid update there.
* G2P: each particle slab gathers from the shared grid and writes only its own particles.

The node sums differ from one thread's only in the order of the float additions (slab 0's
particles, then slab 1's), so results agree with the single-thread path to float rounding.

The layer is a launch hook (SimCore.substep's `launch`): it sees the same kernels and arguments
as a one-thread launch and slices them, so the kernels themselves are unchanged.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import weakref

import warp as wp

from . import kernels, kernels_forward
from .kernels import GridInfo

# Launch arguments of the particle kernels that live on the grid (not sliced by particle), and
# the node arrays of the grid update (sliced by node slab); everything else in a particle-kernel
# launch is per-particle.
GRID_ARGS = frozenset({"grid_mv", "grid_v", "bad", "fixed"})
NODE_ARGS = frozenset({"grid_mv", "grid_v"})
# Below this many particles per thread the fork/join overhead (~0.1 ms per substep) outweighs the gain.
MIN_PARTICLES_PER_THREAD = 2000
MAX_THREADS = 8


@wp.kernel
def add_and_clear(total: wp.array(dtype=wp.vec4), part: wp.array(dtype=wp.vec4)):
    """total += part; part = 0 (one node each)."""
    i = wp.tid()
    total[i] = total[i] + part[i]
    part[i] = wp.vec4(0.0)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def thread_count(setting: int | None, n_particles: int, device: str) -> int:
    """Threads for the forward substeps: the setting, or the usable cores capped at what helps
    (MAX_THREADS, MIN_PARTICLES_PER_THREAD); always 1 on CUDA."""
    if not str(device) == "cpu":
        return 1
    if setting is not None:
        return max(1, int(setting))
    return max(1, min(usable_cores(), MAX_THREADS, n_particles // MIN_PARTICLES_PER_THREAD))


class _Workers:
    """T - 1 daemon threads; run(fn) calls fn(0) here and fn(t) on worker t, then joins.
    cpu_seconds[t]: CPU time thread t spent in fn (a load-independent measure of the split)."""

    def __init__(self, n: int):
        self.n = n
        self.cpu_seconds = [0.0] * n
        self._todo = [queue.SimpleQueue() for _ in range(n - 1)]
        self._done = [queue.SimpleQueue() for _ in range(n - 1)]
        for t in range(1, n):
            threading.Thread(target=self._serve, args=(t,), name=f"mpm-slab-{t}", daemon=True).start()

    def _serve(self, t: int) -> None:
        todo, done = self._todo[t - 1], self._done[t - 1]
        while True:
            fn = todo.get()
            if fn is None:
                return
            try:
                self._timed(fn, t)
                done.put(None)
            except BaseException as exc:  # handed to the caller's thread
                done.put(exc)

    def run(self, fn) -> None:
        for q in self._todo:
            q.put(fn)
        error = None
        try:
            self._timed(fn, 0)
        except BaseException as exc:
            error = exc
        for q in self._done:  # always join every worker before returning (they use shared buffers)
            result = q.get()
            if error is None and result is not None:
                error = result
        if error is not None:
            raise error

    def _timed(self, fn, t: int) -> None:
        c0 = time.thread_time()
        try:
            fn(t)
        finally:
            self.cpu_seconds[t] += time.thread_time() - c0

    def close(self) -> None:
        for q in self._todo:
            q.put(None)


class SlabLauncher:
    """Drop-in for wp.launch in SimCore.substep's forward path: p2g, grid_update and g2p run on
    n_threads threads (see the module docstring); any other kernel runs as a plain launch."""

    def __init__(self, n_particles: int, n_threads: int, device: str):
        if n_threads < 2:
            raise ValueError("SlabLauncher needs at least 2 threads")
        self.n = n_particles
        self.n_threads = n_threads
        self.device = device
        cuts = [n_particles * t // n_threads for t in range(n_threads + 1)]
        self.ranges = list(zip(cuts[:-1], cuts[1:]))
        self._private: list[wp.array] = []  # grids of slabs 1..T-1, zero between substeps
        self._views: dict = {}
        # Load the modules here: two threads must not compile or load one at the same time.
        for module in (kernels, kernels_forward, __name__):
            wp.load_module(module, device=device)
        self._workers = _Workers(n_threads)
        weakref.finalize(self, self._workers.close)

    @property
    def thread_cpu_seconds(self) -> list[float]:
        """CPU seconds each thread has spent in the substep kernels so far."""
        return list(self._workers.cpu_seconds)

    # -- the hook ---------------------------------------------------------------------------
    def __call__(self, kernel, dim, inputs=(), outputs=(), device=None, **kwargs) -> None:
        if kernel in (kernels_forward.p2g, kernels.p2g):
            self._p2g(kernel, inputs, outputs)
        elif kernel in (kernels_forward.grid_update, kernels.grid_update):
            self._grid_update(kernel, dim, inputs, outputs)
        elif kernel in (kernels_forward.g2p, kernels.g2p):
            self._particles(kernel, inputs, outputs)
        else:
            wp.launch(kernel, dim, inputs=inputs, outputs=outputs, device=device, **kwargs)

    # -- particle kernels -------------------------------------------------------------------
    def _p2g(self, kernel, inputs, outputs) -> None:
        names = _arg_names(kernel)
        grid_mv = list(inputs + outputs)[names.index("grid_mv")]
        self._ensure_private(grid_mv.shape[0])
        self._particles(kernel, inputs, outputs, grid_mv=grid_mv)

    def _particles(self, kernel, inputs, outputs, grid_mv=None) -> None:
        names = _arg_names(kernel)
        args = list(inputs) + list(outputs)

        def slab(t: int) -> None:
            a, b = self.ranges[t]
            sliced = []
            for name, arg in zip(names, args):
                if name == "grid_mv" and grid_mv is not None and t > 0:
                    arg = self._private[t - 1][: grid_mv.shape[0]]
                elif isinstance(arg, wp.array) and name not in GRID_ARGS:
                    arg = self._view(arg, t)
                sliced.append(arg)
            if b > a:
                wp.launch(kernel, b - a, inputs=sliced, device=self.device)

        self._workers.run(slab)

    def _view(self, arr: wp.array, t: int) -> wp.array:
        """arr[a:b] of slab t, cached (a view costs ~10 us to build; arrays are reused every substep)."""
        key = (id(arr), t)
        hit = self._views.get(key)
        if hit is not None and hit[0] is arr:
            return hit[1]
        if arr.shape[0] != self.n:
            raise ValueError(f"per-particle launch argument has {arr.shape[0]} rows, expected {self.n}")
        if len(self._views) > 256:  # arrays of finished runs
            self._views.clear()
        a, b = self.ranges[t]
        view = arr[a:b]
        self._views[key] = (arr, view)
        return view

    def _ensure_private(self, nodes: int) -> None:
        if self._private and self._private[0].shape[0] >= nodes:
            return
        self._private = [wp.zeros(nodes, dtype=wp.vec4, device=self.device) for _ in range(self.n_threads - 1)]

    def clear(self) -> None:
        """Zero the private grids (after an interrupted substep)."""
        for g in self._private:
            g.zero_()

    # -- grid update ------------------------------------------------------------------------
    def _grid_update(self, kernel, dim, inputs, outputs) -> None:
        names = _arg_names(kernel)
        args = list(inputs) + list(outputs)
        g = args[names.index("g")]
        nx, ny, nz = (int(g.box_dims[a]) for a in range(3))
        plane = ny * nz
        if nx * plane != dim:
            raise ValueError(f"grid update over {dim} nodes, but its box holds {nx * plane}")
        cuts = [nx * t // self.n_threads for t in range(self.n_threads + 1)]
        grid_mv = args[names.index("grid_mv")]
        private = self._private

        def slab(t: int) -> None:
            i0, i1 = cuts[t], cuts[t + 1]
            if i1 <= i0:
                return
            a, b = i0 * plane, i1 * plane
            for part in private:
                wp.launch(add_and_clear, b - a, inputs=[grid_mv[a:b], part[a:b]], device=self.device)
            sub = _sub_box(g, i0, i1 - i0)
            sliced = []
            for name, arg in zip(names, args):
                if name == "g":
                    arg = sub
                elif name in NODE_ARGS:
                    arg = arg[a:b]
                sliced.append(arg)
            wp.launch(kernel, b - a, inputs=sliced, device=self.device)

        self._workers.run(slab)


def _arg_names(kernel) -> list[str]:
    return [a.label for a in kernel.adj.args]


def _sub_box(g: GridInfo, i0: int, nx: int) -> GridInfo:
    """The x-slab i0 .. i0 + nx - 1 (box coordinates) of g's node box."""
    s = GridInfo()
    s.origin, s.dx, s.inv_dx, s.n, s.x_lo, s.x_hi = g.origin, g.dx, g.inv_dx, g.n, g.x_lo, g.x_hi
    s.box_lo = wp.vec3i(int(g.box_lo[0]) + i0, int(g.box_lo[1]), int(g.box_lo[2]))
    s.box_dims = wp.vec3i(nx, int(g.box_dims[1]), int(g.box_dims[2]))
    return s
