"""Typed, declarative settings: one line per setting (default, type, bounds or choices, doc).

The job's own settings are declared with these types in ``protocol`` and validated once there, before
anything heavy loads. Consumers (the simulator, the fields, the priors) receive plain, complete,
validated dicts and do not check them again. Standard library only, so the Blender side can use it.

A spec checks a value and returns it normalised (ints as int, floats as float, vectors as lists); an
error is a ``SettingError`` whose ``key`` is the full dotted path of the setting (``simulation.pokes[0].end``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["REQUIRED", "SettingError", "Spec", "Number", "Choice", "Text", "Flag", "Vector", "Section", "ListOf",
           "Rule", "bounds_text"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # default of a setting the writer must give (e.g. a poke's centre)


class SettingError(ValueError):
    """A bad setting; ``key`` is its dotted path, the message says what is wrong with it."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key} {problem}")
        self.key = key
        self.problem = problem


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def bounds_text(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    """'[0, 1)' style text of an interval; None is an open infinite end."""
    left = "(" if lo_open or lo is None else "["
    right = ")" if hi_open or hi is None else "]"
    return f"{left}{-math.inf if lo is None else lo:g}, {math.inf if hi is None else hi:g}{right}"


@dataclass(frozen=True)
class Spec:
    default: Any = None
    doc: str = ""
    optional: bool = False  # None is a valid value ("automatic", "none")

    def default_value(self) -> Any:
        return _copy(self.default)

    def check(self, value: Any, key: str) -> Any:
        if value is None and self.optional:
            return None
        if value is REQUIRED:
            raise SettingError(key, "is required")
        return self._check(value, key)

    def _check(self, value: Any, key: str) -> Any:  # pragma: no cover - every subclass overrides
        raise NotImplementedError


@dataclass(frozen=True)
class Number(Spec):
    lo: float | None = None
    hi: float | None = None
    integer: bool = False
    lo_open: bool = False  # lo itself is excluded
    hi_open: bool = False

    def _check(self, value: Any, key: str) -> Any:
        if not _is_number(value):
            raise SettingError(key, f"must be {'an integer' if self.integer else 'a number'}; got {_short(value)}")
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond any float
            raise SettingError(key, f"is far too large; got {_short(value)}") from None
        if not finite:
            raise SettingError(key, f"must be finite; got {value!r}")
        if self.integer and not float(value).is_integer():
            raise SettingError(key, f"must be an integer; got {value!r}")
        below = self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo))
        above = self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi))
        if below or above:
            raise SettingError(key, f"= {value!r} is outside {bounds_text(self.lo, self.hi, self.lo_open, self.hi_open)}")
        return int(value) if self.integer else float(value)


@dataclass(frozen=True)
class Choice(Spec):
    choices: tuple = ()

    def _check(self, value: Any, key: str) -> Any:
        # Same type and value: JSON's 1 is not true, and 1.0 is not a choice named 1.
        if not any(type(value) is type(c) and value == c for c in self.choices):
            raise SettingError(key, f"must be one of {', '.join(map(str, self.choices))}; got {value!r}")
        return value


@dataclass(frozen=True)
class Text(Spec):
    def _check(self, value: Any, key: str) -> Any:
        if not isinstance(value, str):
            raise SettingError(key, f"must be a string; got {value!r}")
        return value


@dataclass(frozen=True)
class Flag(Spec):
    def _check(self, value: Any, key: str) -> Any:
        if not isinstance(value, bool):
            raise SettingError(key, f"must be true or false; got {value!r}")
        return value


@dataclass(frozen=True)
class Vector(Spec):
    """A fixed-length list of numbers; ``shape=(4, 4)`` for a matrix given as nested lists."""

    shape: tuple = (3,)
    nonzero: bool = False
    element: "Number | None" = None  # bounds of every entry (default: any finite number)

    def _check(self, value: Any, key: str) -> Any:
        return self._rows(value, key, self.shape)

    def _rows(self, value: Any, key: str, shape: tuple) -> list:
        size = shape[0]
        what = " x ".join(map(str, shape))
        if not isinstance(value, (list, tuple)) or len(value) != size:
            raise SettingError(key, f"must be a list of {what} numbers; got {_short(value)}")
        if len(shape) > 1:
            return [self._rows(v, f"{key}[{i}]", shape[1:]) for i, v in enumerate(value)]
        element = self.element or Number()
        out = [element._check(v, f"{key}[{i}]") for i, v in enumerate(value)]
        if self.nonzero and not any(out):
            raise SettingError(key, "must not be the zero vector")
        return out


Rule = Callable[[dict, str], None]  # checks relations between the settings of one section


@dataclass(frozen=True)
class Section(Spec):
    """An object with named settings. Unknown keys are refused (a typo must not pass silently);
    missing ones take their defaults. ``rules`` check relations between the settings."""

    fields: dict = field(default_factory=dict)
    rules: tuple = ()
    default_none: bool = False  # the section's own default is None (e.g. no ground plane)

    def default_value(self) -> Any:
        if self.default_none:
            return None
        return {name: spec.default_value() for name, spec in self.fields.items() if spec.default is not REQUIRED}

    def _check(self, value: Any, key: str) -> Any:
        if not isinstance(value, dict):
            raise SettingError(key, f"must be an object; got {_short(value)}")
        unknown = sorted(set(value) - set(self.fields))
        if unknown:
            raise SettingError(key, f"has unknown setting(s) {', '.join(map(str, unknown))}")
        out = {}
        for name, spec in self.fields.items():
            out[name] = spec.check(value[name] if name in value else spec.default_value(), f"{key}.{name}")
        for rule in self.rules:
            rule(out, key)
        return out

    def defaults(self) -> dict:
        return {name: spec.default_value() for name, spec in self.fields.items()}


@dataclass(frozen=True)
class ListOf(Spec):
    item: Spec = field(default_factory=Spec)
    default: Any = field(default_factory=list)
    max_items: int = 10000

    def _check(self, value: Any, key: str) -> Any:
        if not isinstance(value, list):
            raise SettingError(key, f"must be a list; got {_short(value)}")
        if len(value) > self.max_items:
            raise SettingError(key, f"has {len(value)} entries; at most {self.max_items} are allowed")
        return [self.item.check(v, f"{key}[{i}]") for i, v in enumerate(value)]


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(v) for v in value]
    return value


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
