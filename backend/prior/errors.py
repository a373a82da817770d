"""Errors of the video-prior package (stdlib only, so job validation can import them cheaply)."""


class PriorError(Exception):
    """Base class of the errors below."""


class ModelUnavailable(PriorError, RuntimeError):
    """The video model is missing, incomplete or corrupt; the message says how to get it."""


class PriorConfigError(PriorError, ValueError):
    """The prior's settings do not fit the job (e.g. a text model without a prompt)."""


class ReferenceVideoError(PriorError, ValueError):
    """A reference video that cannot be read or does not fit the job's frames and size."""
