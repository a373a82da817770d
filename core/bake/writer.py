"""The interface every bake target implements; ``loop.run_bake`` is the one loop that drives it.

A writer is made for one bake (the object, its point count and the checked frames), then:

    begin(cache_dir, resume, info)    claim the folder, open the staging area (or refuse: BakeError)
    done(frame, fp) / mark(frame, fp) whether a frame with this source fingerprint is already written
    write_frame(index, frame, arrays) one frame's arrays (object-local, float32, the writer's KEYS)
    end(info)                         move the finished bake in; set info.path and info.bytes
    attach(info)                      point the object's readers at the bake (after the old ones went)

and, per target rather than per bake: ``estimate_size(n_points, n_frames)`` and ``detach(obj)``.
"""

from __future__ import annotations

import re

from . import common


class Writer:
    TARGET = ""
    KEYS: tuple = ("positions",)  # frame arrays the writer reads
    LAYOUT: re.Pattern | None = None  # the files it makes in its folder (None: it lives in the .blend)

    def __init__(self, obj, n: int, frames: list, **options):
        if options:
            raise TypeError(f"unknown {self.TARGET} bake option(s): {', '.join(sorted(options))}")
        self.obj, self.n, self.frames = obj, n, frames

    @staticmethod
    def estimate_size(n_points: int, n_frames: int) -> int:
        raise NotImplementedError

    @staticmethod
    def detach(obj) -> None:
        raise NotImplementedError

    def begin(self, cache_dir, resume: bool, info: common.BakeInfo) -> None:
        raise NotImplementedError

    def done(self, frame: int, fp: str) -> bool:
        raise NotImplementedError

    def mark(self, frame: int, fp: str) -> None:
        raise NotImplementedError

    def write_frame(self, index: int, frame: int, arrays: dict) -> None:
        raise NotImplementedError

    def end(self, info: common.BakeInfo) -> None:
        raise NotImplementedError

    def attach(self, info: common.BakeInfo) -> None:
        raise NotImplementedError


class StagedWriter(Writer):
    """A target whose files go to a folder it owns, through ``common.Stage`` (all but shape keys)."""

    def manifest(self) -> dict:
        """What must match for a rerun to resume the staging folder."""
        return common.manifest_for(self.TARGET, self.obj, self.n, self.frames)

    def begin(self, cache_dir, resume: bool, info: common.BakeInfo) -> None:
        self.stage = common.Stage(cache_dir, self.manifest(), self.LAYOUT, resume)
        info.cache_dir = str(self.stage.final)

    def done(self, frame: int, fp: str) -> bool:
        return self.stage.done(frame, fp)

    def mark(self, frame: int, fp: str) -> None:
        self.stage.mark(frame, fp)

    def stored_path(self, final):
        """What the reader is pointed at: the folder, or a file in it."""
        return final

    def end(self, info: common.BakeInfo) -> None:
        final = self.stage.commit()
        info.path = common.blend_relative(self.stored_path(final))
        info.bytes = self.stage.bytes
