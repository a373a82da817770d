"""Material fields with bounded, log-space Young's modulus (see material.py)."""
from .bounds import FieldConfigError, SigmoidRange
from .kan import KANLayer, bspline_bases, uniform_knots
from .material import (FIELD_KINDS, GlobalField, KANTriplaneField, MaterialField, MLPTriplaneField,
                       PerParticleField, make_field, unit_positions)
from .triplane import Triplane

__all__ = ["FieldConfigError", "SigmoidRange", "KANLayer", "bspline_bases", "uniform_knots", "FIELD_KINDS",
           "GlobalField", "KANTriplaneField", "MaterialField", "MLPTriplaneField", "PerParticleField",
           "make_field", "unit_positions", "Triplane"]
