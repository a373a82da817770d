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
from .replay import Replayer

# Launch arguments of the particle kernels that live on the grid (not sliced by particle), and
# the node arrays of the grid update (sliced by node slab); everything else in a particle-kernel
# launch is per-particle.
GRID_ARGS = frozenset({"grid_mv", "grid_v", "bad", "fixed", "adj_grid_mv", "adj_grid_v"})
NODE_ARGS = frozenset({"grid_mv", "grid_v", "adj_grid_mv", "adj_grid_v"})
# Below this many particles per thread the fork/join overhead (~0.1 ms per launch) outweighs the gain:
# `benchmarks/mpm.py --threads-crossover` (differentiable rollout, forward and backward, 2 threads against 1, the
# range over two runs) 0.71-0.73x at 2.7k, 0.85-0.94x at 4.1k, 0.95-0.99x at 4.9k, 0.74-1.02x at 5.8k, 0.85-1.19x
# at 8k, 0.98-1.32x at 13.8k; the baking solver gains 1.8x at 50k.
MIN_PARTICLES_PER_THREAD = 3000
MAX_THREADS = 8


@wp.kernel
def add_and_clear4(total: wp.array(dtype=wp.vec4), part: wp.array(dtype=wp.vec4)):
    """total += part; part = 0 (one node each)."""
    i = wp.tid()
    total[i] = total[i] + part[i]
    part[i] = wp.vec4(0.0)


@wp.kernel
def add_and_clear3(total: wp.array(dtype=wp.vec3), part: wp.array(dtype=wp.vec3)):
    i = wp.tid()
    total[i] = total[i] + part[i]
    part[i] = wp.vec3(0.0)


def usable_cores() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    # A scheduler that reserved fewer cores for this process says so here (Ray sets it to the task's CPUs,
    # and `backend batch` to the job's reservation): more threads would steal the other jobs' cores.
    budget = os.environ.get("OMP_NUM_THREADS", "")
    return min(cores, int(budget)) if budget.isdigit() and int(budget) > 0 else cores


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
    """Drop-in for wp.launch in SimCore.substep: p2g, grid_update and g2p run on n_threads
    threads (see the module docstring); any other kernel runs as a plain launch. `adjoint` runs
    the reverse of a recorded launch the same way (see LaunchRecord)."""

    def __init__(self, n_particles: int, n_threads: int, device: str, replay: bool = False):
        if n_threads < 2:
            raise ValueError("SlabLauncher needs at least 2 threads")
        self.n = n_particles
        self.n_threads = n_threads
        self.device = device
        cuts = [n_particles * t // n_threads for t in range(n_threads + 1)]
        self.ranges = list(zip(cuts[:-1], cuts[1:]))
        # private grids of threads 1..T-1 (P2G momentum; G2P adjoint velocity), zero between launches
        self._private = {wp.vec4: [], wp.vec3: []}
        self._views: dict = {}
        self._sub_boxes: dict = {}
        # forward launches of each thread (replay.Replayer: one per thread, it holds packed parameters)
        self._launch = [Replayer(device) if replay else wp.launch for _ in range(n_threads)]
        # Load the modules here: two threads must not compile or load one at the same time.
        for module in (kernels, kernels_forward, __name__):
            wp.load_module(module, device=device)
        self._workers = _Workers(n_threads)
        weakref.finalize(self, self._workers.close)

    @property
    def thread_cpu_seconds(self) -> list[float]:
        """CPU seconds each thread has spent in the substep kernels so far."""
        return list(self._workers.cpu_seconds)

    # -- the hooks --------------------------------------------------------------------------
    def __call__(self, kernel, dim, inputs=(), outputs=(), device=None, **kwargs) -> None:
        self._dispatch(kernel, dim, list(inputs) + list(outputs), None, device, kwargs)

    def adjoint(self, kernel, dim, args: list, adj_args: list, device=None) -> None:
        """Reverse launch of kernel(args): accumulates into adj_args (the arguments' gradients)."""
        self._dispatch(kernel, dim, args, adj_args, device, {})

    # -- the launcher of the hand-written adjoints (adjoints.Launch on one thread) -----------
    def particles(self, kernel, n: int, args: list, scatter: str | None = None) -> None:
        """A particle kernel on the particle slabs; `scatter` names the grid argument it adds into
        (private grids for threads 1.., added into it afterwards)."""
        dtype = None if scatter is None else args[_arg_names(kernel).index(scatter)].dtype
        self._particles(kernel, list(args), None, None if scatter is None else (scatter, dtype),
                        reduce=scatter is not None)

    def particles_adjoint(self, kernel, n: int, args: list, adj: list) -> None:
        """warp's generated adjoint of a particle kernel that scatters into no grid, on the slabs."""
        self._particles(kernel, list(args), list(adj), None)

    def generated(self, kernel, dim, args: list, adj: list, device=None) -> None:
        self._dispatch(kernel, dim, args, adj, device, {})

    def nodes(self, kernel, dim: int, args: list) -> None:
        """A kernel over the nodes of a box (its GridInfo argument `g`) on the node slabs."""
        self._node_slabs(kernel, dim, args, None, private=[])

    def _dispatch(self, kernel, dim, args, adj, device, kwargs) -> None:
        if kernel in (kernels_forward.p2g, kernels.p2g):
            self._particles(kernel, args, adj, private=("grid_mv", wp.vec4) if adj is None else None)
        elif kernel in (kernels_forward.grid_update, kernels.grid_update):
            self._grid_update(kernel, dim, args, adj)
        elif kernel in (kernels_forward.g2p, kernels.g2p):
            # forward: gathers from the grid; reverse: scatters into the grid velocity's gradient
            self._particles(kernel, args, adj, private=None if adj is None else ("grid_v", wp.vec3))
        elif adj is None:
            wp.launch(kernel, dim, inputs=args, device=device, **kwargs)
        else:
            wp.launch(kernel, dim, inputs=args, adj_inputs=adj, adjoint=True, device=device)

    # -- particle kernels -------------------------------------------------------------------
    def _particles(self, kernel, args, adj, private, reduce: bool = False) -> None:
        """Launch kernel on each particle slab. private = (argument name, dtype) of the grid array
        this launch scatters into (the gradient's, in reverse): threads 1.. scatter into private
        copies, which are added into the real one on node slabs afterwards."""
        names = _arg_names(kernel)
        target, parts = None, []
        if private is not None:
            target = args[names.index(private[0])] if adj is None else adj[names.index(private[0])]
        if target is not None:  # (an array without gradient gets no scatter in reverse)
            parts = self._ensure_private(private[1], target.shape[0])

        def slab(t: int) -> None:
            a, b = self.ranges[t]
            if b <= a:
                return
            sliced = [self._slice(name, arg, t) for name, arg in zip(names, args)]
            sliced_adj = None if adj is None else [self._slice(name, g, t) for name, g in zip(names, adj)]
            if target is not None and t > 0:
                i = names.index(private[0])
                (sliced if adj is None else sliced_adj)[i] = parts[t - 1][: target.shape[0]]
            if adj is None:
                self._launch[t](kernel, b - a, inputs=sliced, device=self.device)
            else:
                wp.launch(kernel, b - a, inputs=sliced, adj_inputs=sliced_adj, adjoint=True, device=self.device)

        try:
            self._workers.run(slab)
        except BaseException:
            self.clear()
            raise
        if target is not None and (adj is not None or reduce):
            self._reduce(target, parts)  # the reverse grid update reads it next

    def _slice(self, name: str, arg, t: int):
        if isinstance(arg, wp.array) and name not in GRID_ARGS:
            return self._view(arg, t)
        return arg

    def _view(self, arr: wp.array, t: int) -> wp.array:
        """arr[a:b] of slab t, cached (a view costs ~10 us to build; arrays are reused every substep)."""
        key = (id(arr), t)
        hit = self._views.get(key)
        if hit is not None and hit[0] is arr:
            return hit[1]
        if arr.shape[0] != self.n:
            raise ValueError(f"per-particle launch argument has {arr.shape[0]} rows, expected {self.n}")
        if len(self._views) > 1024:  # arrays of finished runs
            self._views.clear()
        a, b = self.ranges[t]
        view = arr[a:b]
        self._views[key] = (arr, view)
        return view

    def _ensure_private(self, dtype, nodes: int) -> list:
        parts = self._private[dtype]
        if not parts or parts[0].shape[0] < nodes:
            parts = [wp.zeros(nodes, dtype=dtype, device=self.device) for _ in range(self.n_threads - 1)]
            self._private[dtype] = parts
        return parts

    def clear(self) -> None:
        """Zero the private grids (after an interrupted launch)."""
        for parts in self._private.values():
            for g in parts:
                g.zero_()

    def _reduce(self, total: wp.array, parts: list) -> None:
        """total += every private grid, which are zeroed; node slabs on all threads."""
        nodes = total.shape[0]
        kernel = add_and_clear4 if total.dtype == wp.vec4 else add_and_clear3

        def slab(t: int) -> None:
            a, b = nodes * t // self.n_threads, nodes * (t + 1) // self.n_threads
            if b > a:
                for part in parts:
                    wp.launch(kernel, b - a, inputs=[total[a:b], part[a:b]], device=self.device)

        self._workers.run(slab)

    # -- grid update ------------------------------------------------------------------------
    def _grid_update(self, kernel, dim, args, adj) -> None:
        """Forward: add the private P2G grids into the real one, then update, per x-slab of the
        node box. Reverse: the adjoint per x-slab (each node is independent)."""
        self._node_slabs(kernel, dim, args, adj, private=self._private[wp.vec4] if adj is None else [])

    def _node_slabs(self, kernel, dim, args, adj, private: list) -> None:
        """kernel (adj: its generated adjoint) on each x-slab of the node box, after adding the
        `private` grids into grid_mv there."""
        names = _arg_names(kernel)
        g = args[names.index("g")]
        nx, ny, nz = (int(g.box_dims[a]) for a in range(3))
        plane = ny * nz
        if nx * plane != dim:
            raise ValueError(f"{kernel.key} over {dim} nodes, but its box holds {nx * plane}")
        cuts = [nx * t // self.n_threads for t in range(self.n_threads + 1)]
        grid_mv = args[names.index("grid_mv")] if private else None

        def cut(name, arg, a, b, sub):
            if name == "g":
                return sub
            if name in NODE_ARGS and arg is not None:
                return arg[a:b]
            return arg

        def slab(t: int) -> None:
            i0, i1 = cuts[t], cuts[t + 1]
            if i1 <= i0:
                return
            a, b = i0 * plane, i1 * plane
            for part in private:
                self._launch[t](add_and_clear4, b - a, inputs=[grid_mv[a:b], part[a:b]], device=self.device)
            sub = self._sub_box(g, i0, i1 - i0)
            sliced = [cut(name, arg, a, b, sub) for name, arg in zip(names, args)]
            if adj is None:
                self._launch[t](kernel, b - a, inputs=sliced, device=self.device)
            else:
                sliced_adj = [cut(name, arg, a, b, GridInfo()) for name, arg in zip(names, adj)]
                wp.launch(kernel, b - a, inputs=sliced, adj_inputs=sliced_adj, adjoint=True, device=self.device)

        self._workers.run(slab)

    def _sub_box(self, g: GridInfo, i0: int, nx: int) -> GridInfo:
        """_sub_box(g, i0, nx), built once per box struct (SimCore shares one struct per box)."""
        key = (id(g), i0, nx)
        hit = self._sub_boxes.get(key)
        if hit is None or hit[0] is not g:
            if len(self._sub_boxes) > 4096:
                self._sub_boxes.clear()
            hit = self._sub_boxes[key] = (g, _sub_box(g, i0, nx))
        return hit[1]


def plain_adjoint(kernel, dim, args: list, adj_args: list, device=None) -> None:
    """One-thread reverse launch (the counterpart of SlabLauncher.adjoint)."""
    wp.launch(kernel, dim, inputs=args, adj_inputs=adj_args, adjoint=True, device=device)


class LaunchRecord:
    """The launches of one taped substep, replayed in reverse by `backward` (warp's Tape does the
    same, but its reverse pass runs each kernel on one thread). Kernels in `given` are recorded for
    the reverse pass but not run: their outputs are already in place (a kept P2G grid)."""

    def __init__(self, launch, given=()):
        self._launch = launch
        self._given = tuple(given)
        self.launches: list = []

    def __call__(self, kernel, dim, inputs=(), outputs=(), device=None, **kwargs) -> None:
        if kernel not in self._given:
            self._launch(kernel, dim, inputs=inputs, outputs=outputs, device=device, **kwargs)
        self.launches.append((kernel, dim, list(inputs) + list(outputs), device))

    def backward(self, adjoint=plain_adjoint) -> None:
        for kernel, dim, args, device in reversed(self.launches):
            adjoint(kernel, dim, args, [_adjoint_of(a) for a in args], device)


_TAPE = wp.Tape()  # only for its mapping of a struct argument to its adjoint mirror
_ZERO_MIRRORS: dict = {}


def _adjoint_of(arg):
    """The adjoint argument of a launch argument: an array's grad, a struct's mirror (shared per
    struct type when none of its arrays has a gradient: building one costs ~50 us), else None."""
    if isinstance(arg, wp.array):
        return arg.grad
    if isinstance(arg, (int, float)):
        return None
    if not wp.types.is_struct(arg):
        return _TAPE.get_adjoint(arg)
    mirror = _ZERO_MIRRORS.get(arg._cls)
    if mirror is None or any(isinstance(f, wp.array) and f.grad is not None
                             for f in (getattr(arg, name) for name in arg._cls.vars)):
        mirror = _TAPE.get_adjoint(arg)
        _TAPE.gradients.clear()
        if not any(isinstance(getattr(mirror, name), wp.array) for name in arg._cls.vars):
            _ZERO_MIRRORS[arg._cls] = mirror
    return mirror


def _arg_names(kernel) -> list[str]:
    return [a.label for a in kernel.adj.args]


def _sub_box(g: GridInfo, i0: int, nx: int) -> GridInfo:
    """The x-slab i0 .. i0 + nx - 1 (box coordinates) of g's node box."""
    s = GridInfo()
    s.origin, s.dx, s.inv_dx, s.n, s.x_lo, s.x_hi = g.origin, g.dx, g.inv_dx, g.n, g.x_lo, g.x_hi
    s.box_lo = wp.vec3i(int(g.box_lo[0]) + i0, int(g.box_lo[1]), int(g.box_lo[2]))
    s.box_dims = wp.vec3i(nx, int(g.box_dims[1]), int(g.box_dims[2]))
    return s
