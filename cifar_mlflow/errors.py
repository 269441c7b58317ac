"""Errors the command line turns into one clear line on stderr."""


class ConfigError(ValueError):
    """Bad user input (options, data, model, checkpoint): exit status 2, nothing created."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run is marked FAILED."""
