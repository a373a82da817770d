"""Hostile data for the safety tests: pickles whose unpickling would leave a sentinel file."""

import pickle
from pathlib import Path

import numpy as np


class Payload:
    """Unpickling this creates the sentinel file: proof that code from data ran."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def pickle_bytes(sentinel: Path) -> bytes:
    return pickle.dumps(Payload(sentinel))


def pickled_npz(path: Path, sentinel: Path) -> None:
    """A real .npz whose array is an object array: np.load(allow_pickle=True) would run the payload."""
    with open(path, "wb") as f:
        np.savez(f, positions=np.array([Payload(sentinel)], dtype=object))
