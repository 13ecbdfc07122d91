"""The one error a malformed genesis document raises."""


class GenesisError(ValueError):
    """The genesis document is malformed; the message names the field."""
