"""Errors the command line turns into one clear line on stderr."""


class ConfigError(ValueError):
    """Bad user input (options, data, model, checkpoint): exit status 2, nothing created."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run is marked FAILED."""


def require_extra(module: str, extra: str, needed_by: str) -> None:
    """Raise `ConfigError` saying how to install `module` (an optional extra of the package) when it is missing."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{needed_by} needs the {module} package, an optional extra: "
                          f"pip install 'cifar_mlflow[{extra}]'") from None
