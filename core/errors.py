"""The one error the scene's set-up raises: what the artist must change before a job can be written."""


class SetupError(ValueError):
    """The scene cannot be turned into a job; the message tells the artist what to change."""
