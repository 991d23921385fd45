"""Errors phrased for the user. A leaf: every stage raises these, and this module imports nothing
of the package, so imports only point down from a stage to it."""


class ConfigError(ValueError):
    """A configuration problem, phrased for the user (names the file and the key)."""
