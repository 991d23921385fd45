"""Errors phrased for the user. A leaf: every stage raises these, and this module imports nothing
of the package, so imports only point down from a stage to it."""


class ConfigError(ValueError):
    """A configuration problem, phrased for the user (names the file and the key)."""


class RunError(Exception):
    """A run that cannot go on for a reason outside its configuration (a full disk, a broken
    checkpoint), phrased for the user: the CLI prints it without a traceback."""
