"""Resume state as plain arrays and JSON: nothing in the file can run code when it is read back.

A state is a nested structure of dicts (any str/int keys), lists, tensors, numpy arrays, numbers, strings,
booleans and None, such as ``{"field": module.state_dict(), "optimizer": opt.state_dict(), "history": [...]}``.
It is stored in one ``.npz``: every tensor becomes an array, and the structure goes into a JSON string
array (``__meta__``). Reading uses ``np.load(allow_pickle=False)`` (protocol.load_npz), and the
fingerprint is compared before anything else of the file is used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import protocol

META = "__meta__"


class StateRejected(Exception):
    """A resume file that must not be used; the message says why (the run starts over)."""


def save_state(path: Path, fingerprint: str, state: Any) -> None:
    arrays: dict[str, np.ndarray] = {}
    structure = _encode(state, arrays)
    meta = json.dumps({"fingerprint": fingerprint, "state": structure}, allow_nan=True)
    protocol.atomic_save_npz(path, **{META: np.str_(meta)}, **arrays)


def load_state(path: Path, fingerprint: str, as_tensor=None) -> Any:
    """The saved state, or StateRejected when the file is unreadable, foreign (other settings) or holds
    NaN / infinite values. ``as_tensor`` turns arrays back into tensors (e.g. torch.from_numpy)."""
    try:
        arrays = protocol.load_npz(path)
    except protocol.BadJob as exc:
        raise StateRejected(f"it is unreadable ({exc.message})") from None
    try:
        meta = json.loads(str(arrays.pop(META)))
        saved = meta["fingerprint"]
    except (KeyError, TypeError, ValueError):
        raise StateRejected("it is not a resume file of this backend") from None
    if saved != fingerprint:
        raise StateRejected("it was made with other settings or another scene")
    for name, a in arrays.items():
        if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
            raise StateRejected(f"it holds NaN or infinite values ({name})")
    try:
        return _decode(meta["state"], arrays, as_tensor or (lambda a: a))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise StateRejected(f"its layout is not one this backend wrote ({exc})") from None


def _encode(value: Any, arrays: dict) -> Any:
    if isinstance(value, dict):
        return {"d": [[_key(k), _encode(v, arrays)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"l": [_encode(v, arrays) for v in value]}
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor (no torch import needed here)
        value = value.detach().cpu().numpy()
    if isinstance(value, (np.ndarray, np.generic)) and not isinstance(value, (np.str_, np.bool_)):
        name = f"a{len(arrays)}"
        arrays[name] = np.asarray(value)
        return {"a": name}
    if isinstance(value, np.bool_):
        return bool(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a resume file")


def _key(k: Any) -> Any:
    if not isinstance(k, (str, int)) or isinstance(k, bool):
        raise TypeError(f"resume-file keys must be strings or integers, got {k!r}")
    return k


def _decode(node: Any, arrays: dict, as_tensor) -> Any:
    if isinstance(node, dict):
        if "a" in node:
            return as_tensor(arrays[node["a"]])
        if "l" in node:
            return [_decode(v, arrays, as_tensor) for v in node["l"]]
        return {_key(k): _decode(v, arrays, as_tensor) for k, v in node["d"]}
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise ValueError(f"unexpected entry {node!r:.60}")
