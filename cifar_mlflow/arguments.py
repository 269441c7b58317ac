"""A command line generated from a config dataclass, with `--config FILE.yaml` support.

Precedence, lowest first: dataclass defaults, per-architecture recommendations (applied later by
`resolve_config` to fields left unset), the YAML file, then flags given on the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml

from cifar_mlflow.errors import ConfigError

# Spelled-out "unset" for optional fields, so MLproject parameters can carry a default.
_UNSET_WORDS = {"", "auto", "none", "null", "default"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(the type, whether None is allowed) of a resolved annotation (`typing.get_type_hints`) such as `int | None`."""
    args = get_args(annotation)
    if get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return annotation, False


def parse_value(name: str, raw: Any, annotation: Any, choices: tuple[str, ...] = ()) -> Any:
    """Convert a CLI/YAML/MLproject value to the field's type, or raise `ConfigError`.

    A word such as "none" means unset, unless it is one of the field's `choices` (`--scheduler none`).
    """
    kind, optional = _base_type(annotation)
    if isinstance(raw, str) and raw in choices:
        return raw
    if isinstance(raw, str) and optional and raw.strip().lower() in _UNSET_WORDS:
        return None
    if raw is None:
        if optional:
            return None
        raise ConfigError(f"{name} needs a value")
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in _TRUE | _FALSE:
                return str(raw).lower() in _TRUE
            raise ValueError
        if kind is int:
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, float) and raw.is_integer():
                return int(raw)
            return int(str(raw))
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if kind is dict:
            if isinstance(raw, dict):
                return raw
            from cifar_mlflow.config import parse_model_args

            return parse_model_args(str(raw))
        return str(raw)
    except ConfigError:
        raise
    except ValueError:
        expected = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, kind.__name__)
        raise ConfigError(f"{name} must be {expected}, got {raw!r}") from None


def _format_default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


class _JoinValues(argparse.Action):
    """`--runs A B C` into the one string field "A B C" (the same value MLproject passes)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, " ".join(values))


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One `--kebab-case` flag per dataclass field; defaults are SUPPRESSed to detect what was set."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        kind, _ = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "").replace("%", "%%")  # argparse %-formats help
        if "default:" not in help_text:  # unless the help says it in its own words
            help_text += f" (default: {_format_default(default)})"
        choices = f.metadata.get("choices")
        if kind is bool:
            # `--compile`, `--compile false` (MLproject passes values) and `--no-compile` all work.
            parser.add_argument(flag, dest=f.name, nargs="?", const="true", default=argparse.SUPPRESS,
                                metavar="BOOL", help=help_text)
            parser.add_argument("--no-" + flag[2:], dest=f.name, action="store_const", const="false",
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            if "_" in f.name:  # as `mlflow run` hands on an undeclared -P (see below)
                parser.add_argument("--" + f.name, dest=f.name, nargs="?", const="true", default=argparse.SUPPRESS,
                                    help=argparse.SUPPRESS)
            continue
        metavar = "{" + ",".join(choices) + "}" if choices else f.name.upper()
        many = {"nargs": "+", "action": _JoinValues} if f.metadata.get("nargs") == "+" else {}
        action = parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar=metavar,
                                     help=help_text, **many)
        action.completion_choices = choices  # for shell completion only: the words are checked by parse_value
        if "_" in f.name:  # `mlflow run -P max_train_samples=64` hands it on as --max_train_samples 64
            parser.add_argument("--" + f.name, dest=f.name, default=argparse.SUPPRESS, help=argparse.SUPPRESS,
                                **many)


def load_yaml_config(path: str) -> dict[str, Any]:
    """Fields from a YAML mapping; the file's problems become `ConfigError`."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def collect_values(args: argparse.Namespace, config_cls: type,
                   extra: tuple[str, ...] = ()) -> tuple[dict[str, Any], set[str]]:
    """Typed field values from `--config` then CLI flags; also the names the user set.

    Names in `extra` are arguments of the command that are not config fields; they are dropped.
    """
    hints = typing.get_type_hints(config_cls)
    names = {f.name for f in dataclasses.fields(config_cls)}
    choices = {f.name: tuple(f.metadata.get("choices") or ()) for f in dataclasses.fields(config_cls)}
    given = {k: v for k, v in vars(args).items() if k not in extra and k != "config"}
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        from_file = load_yaml_config(args.config)
        unknown = sorted(set(from_file) - names)
        if unknown:
            raise ConfigError(f"unknown option {unknown[0]!r} in {args.config}; valid options: "
                              f"{', '.join(sorted(names))}")
        values.update({k: parse_value(k, v, hints[k], choices[k]) for k, v in from_file.items()})
    values.update({k: parse_value(k, v, hints[k], choices[k]) for k, v in given.items()})
    return values, set(values)


def program_name(command: str) -> str:
    """How the user called `command`, for its usage line: `cifar-mlflow train` through the console script,
    `python -m cifar_mlflow train` through the package, else `python -m cifar_mlflow.train`."""
    import sys

    called = Path(sys.argv[0] if sys.argv else "")
    if called.name == "cifar-mlflow":
        return f"cifar-mlflow {command}"
    if called.name == "__main__.py" and called.parent.name == "cifar_mlflow":
        return f"python -m cifar_mlflow {command}"
    return f"python -m cifar_mlflow.{command}"
