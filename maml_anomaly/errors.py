"""The project's exception types.

Errors meant for users derive from :class:`MamlAnomalyError`: the command line prints their
message as one paragraph on stderr and exits with status 1, without a traceback. Any other
exception is a bug and keeps its traceback. A message says what was expected, what was found
and how to fix it.
"""


class MamlAnomalyError(Exception):
    """An error the user can fix; the CLI prints it and exits 1."""


class InputError(MamlAnomalyError):
    """Bad input data or arguments."""


class CalendarStepError(InputError):
    """Series sampled once a calendar month, quarter or year: no fixed step."""


class ModelDirError(MamlAnomalyError):
    """A model directory that is missing, incompatible or corrupt."""


class ConfigError(MamlAnomalyError):
    """A bad configuration file or option value."""
