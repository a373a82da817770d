"""Video-diffusion priors (SVD image-to-video, ModelScope text-to-video, analytic) and reference videos.

Importing this package stays light (stdlib and the contract): `check_model` and the errors are usable by the
`doctor` command and job validation without loading torch. `load_prior` imports the heavy stack.
"""
from .errors import ModelUnavailable, PriorConfigError, PriorError, ReferenceVideoError
from .models import DEFAULT_MODELS, check_model, locate_model


def load_prior(kind, model, device="cpu", dtype=None, **opts):
    """See backend.prior.loader.load_prior."""
    from .loader import load_prior as _load

    return _load(kind, model, device=device, dtype=dtype, **opts)


def validate_options(kind, opts):
    from .loader import validate_options as _validate

    return _validate(kind, opts)


__all__ = ["ModelUnavailable", "PriorConfigError", "PriorError", "ReferenceVideoError", "DEFAULT_MODELS",
           "check_model", "locate_model", "load_prior", "validate_options"]
