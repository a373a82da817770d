"""The one registry of bake targets: each target's writer (writer.py), in the contract's order."""

from ...backend import protocol
from .folder import BakeError
from .gn_cache import GNCacheWriter
from .pc2 import PC2Writer
from .ply_sequence import PlySequenceWriter
from .shape_keys import ShapeKeysWriter

WRITERS = {w.TARGET: w for w in (GNCacheWriter, PlySequenceWriter, PC2Writer, ShapeKeysWriter)}
assert tuple(WRITERS) == protocol.BAKE_TARGETS


def writer_for(target: str):
    """The writer class of ``target``, or a BakeError naming the targets there are."""
    try:
        return WRITERS[target]
    except (KeyError, TypeError):
        raise BakeError(f"unknown bake target {target!r}; use one of {', '.join(protocol.BAKE_TARGETS)}") from None
