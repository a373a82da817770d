"""Replayed kernel launches: a drop-in for wp.launch that packs only the arguments that changed.

wp.launch checks and converts every argument to its C form on every call; a substep kernel has
15-22 arguments and a CPU substep of a few thousand particles costs about as much in that packing
as in the kernels. A substep launches the same kernels again and again, most arguments being the
same objects as last time (material arrays, boundaries, the node box of the last few substeps), so
a Replayer keeps one recorded launch per kernel (warp's ``wp.launch(..., record_cmd=True)``) and,
on each call, replaces only the arguments that are not the same object (or, for a number, the same
value) as in the previous call before running it again. The kernel and its results are exactly
those of wp.launch. ``Replayer.adjoint`` does the same for a kernel's generated adjoint (its forward
and adjoint arguments), which the backward launches once a substep.

CPU only: on CUDA a recorded launch would also replay kernel parameter addresses, which is not
exercised here (SimCore keeps wp.launch there).
"""

from __future__ import annotations

import warp as wp


class Replayer:
    """``Replayer(device)(kernel, dim, inputs=..., outputs=..., device=...)`` runs like wp.launch.

    One instance per thread (a recorded launch holds its packed parameters). It keeps references
    to the arguments of each kernel's last launch until the next one (the recorded launch needs
    them alive), which is no longer than the substep buffers live anyway."""

    def __init__(self, device: str):
        if not str(device) == "cpu":
            raise ValueError("Replayer replays CPU launches only; use wp.launch on CUDA")
        self.device = device
        self._recorded: dict = {}  # kernel -> [Launch, dim, argument list of its last launch]

    def __call__(self, kernel, dim, inputs=(), outputs=(), device=None, **kwargs) -> None:
        if kwargs:  # adjoint launches, streams...: not replayed
            wp.launch(kernel, dim, inputs=inputs, outputs=outputs, device=device or self.device, **kwargs)
            return
        args = [*inputs, *outputs]
        hit = self._recorded.get(kernel)
        if hit is None or len(args) != len(hit[2]):
            launch = wp.launch(kernel, dim, inputs=inputs, outputs=outputs, device=self.device, record_cmd=True)
            self._recorded[kernel] = [launch, dim, args]
            launch.launch()
            return
        self._replay(hit, dim, args)
        hit[0].launch()

    def adjoint(self, kernel, dim, args: list, adj_args: list) -> None:
        """wp.launch(kernel, dim, inputs=args, adj_inputs=adj_args, adjoint=True), replayed."""
        key = (kernel, "adjoint")
        hit = self._recorded.get(key)
        if hit is None or len(args) != len(hit[2]):
            launch = wp.launch(kernel, dim, inputs=args, adj_inputs=adj_args, adjoint=True, device=self.device,
                               record_cmd=True)
            self._recorded[key] = [launch, dim, list(args), list(adj_args)]
            launch.launch()
            return
        self._replay(hit, dim, args)
        _set_changed(hit[0], hit[3], adj_args, adjoint=True)
        hit[3] = list(adj_args)
        hit[0].launch()

    @staticmethod
    def _replay(hit: list, dim, args: list) -> None:
        """The recorded launch `hit` (launch, dim, arguments) set to this dim and these forward arguments."""
        if dim != hit[1]:
            hit[0].set_dim(dim)
            hit[1] = dim
        _set_changed(hit[0], hit[2], args, adjoint=False)
        hit[2] = list(args)


def _set_changed(launch, last: list, args: list, adjoint: bool) -> None:
    """Set every argument of the recorded launch that is not the one it last ran with."""
    for i, (new, old) in enumerate(zip(args, last)):
        if new is old:
            continue
        kind = type(new)
        if kind is wp.array and type(old) is wp.array and new.dtype is old.dtype and new.ndim == old.ndim:
            # same array type as the checked first launch: its C descriptor is all that changes
            launch.set_param_at_index_from_ctype(i, new.__ctype__(), adjoint)
        elif (kind is float or kind is int) and type(old) is kind:
            if new != old:
                launch.set_param_at_index_from_ctype(i, new, adjoint)
        else:  # a struct, a vector, None or a type change: warp's own checked packing
            launch.set_param_at_index(i, new, adjoint)
