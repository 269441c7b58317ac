"""Search spaces: a YAML file declaring each tuned parameter, validated before any study exists.

```yaml
lr:            {type: float, low: 1.0e-3, high: 0.3, log: true}
batch_size:    {type: categorical, choices: [64, 128, 256]}
epochs:        {type: int, low: 5, high: 30, step: 5}
momentum:      {type: float, low: 0.8, high: 0.99, when: {optimizer: sgd}}
model_args.width_mult: {type: categorical, choices: [0.5, 0.75, 1.0], when: {arch: [mobilenetv2]}}
```

Keys are training options (`TrainConfig` fields) or `model_args.<name>`. `when` makes a parameter
conditional on values of parameters declared before it or, failing that, of the fixed base config.
This module is pure: `cifar_mlflow.tune.study` asks Optuna for the values.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cifar_mlflow.config import TrainConfig
from cifar_mlflow.errors import ConfigError

KINDS = ("float", "int", "categorical")
MODEL_ARGS_PREFIX = "model_args."
# Options a trial must not change: where it logs, what it resumes, how it reports progress.
NOT_TUNABLE = {"tracking_uri", "resume", "from_run", "run_name", "experiment_name", "checkpoint_dir", "register_model",
               "log_model", "progress", "device", "data_dir", "dataset", "model_args"}


@dataclass(frozen=True)
class ParamSpec:
    """One tuned parameter."""

    name: str
    kind: str  # float, int or categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    when: dict[str, tuple] = field(default_factory=dict)  # other parameter -> allowed values

    def applies(self, values: dict[str, Any]) -> bool:
        """Whether the conditions hold for the values chosen so far (plus the base config)."""
        return all(values.get(key) in allowed for key, allowed in self.when.items())


def _number(key: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"search space: {key}.{name} must be a number, got {value!r}")
    return value


def _parse_param(key: str, spec: Any, known: set[str]) -> ParamSpec:
    config_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if key.startswith(MODEL_ARGS_PREFIX):
        if not key[len(MODEL_ARGS_PREFIX):]:
            raise ConfigError(f"search space: {key!r} needs a name after model_args.")
    elif key not in config_fields:
        raise ConfigError(f"search space: {key!r} is not a training option; use one of "
                          f"{', '.join(sorted(config_fields - NOT_TUNABLE))} or model_args.<name>")
    elif key in NOT_TUNABLE:
        raise ConfigError(f"search space: {key!r} cannot be tuned")
    if not isinstance(spec, dict):
        raise ConfigError(f"search space: {key} must be a mapping such as {{type: float, low: 0.001, high: 0.1}}")
    allowed_keys = {"type", "low", "high", "log", "step", "choices", "when"}
    extra = sorted(set(spec) - allowed_keys)
    if extra:
        raise ConfigError(f"search space: {key} has unknown field {extra[0]!r}; "
                          f"fields are {', '.join(sorted(allowed_keys))}")
    kind = spec.get("type")
    if kind not in KINDS:
        raise ConfigError(f"search space: {key}.type must be one of {', '.join(KINDS)}, got {kind!r}")
    when = spec.get("when", {}) or {}
    if not isinstance(when, dict):
        raise ConfigError(f"search space: {key}.when must map a parameter to a value or a list of values")
    for other in when:
        if other not in known and other not in config_fields:
            raise ConfigError(f"search space: {key}.when refers to {other!r}, which is neither declared above "
                              "nor a training option")
    conditions = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in when.items()}
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"search space: {key}.choices must be a non-empty list")
        if any(k in spec for k in ("low", "high", "log", "step")):
            raise ConfigError(f"search space: {key} is categorical: give choices, not low/high/log/step")
        return ParamSpec(key, kind, choices=tuple(choices), when=conditions)
    for bound in ("low", "high"):
        if bound not in spec:
            raise ConfigError(f"search space: {key}.{bound} is missing")
    low, high = _number(key, "low", spec["low"]), _number(key, "high", spec["high"])
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"search space: {key}.log must be true or false")
    step = spec.get("step")
    if step is not None:
        step = _number(key, "step", step)
        if step <= 0:
            raise ConfigError(f"search space: {key}.step must be positive, got {step}")
        if log:
            raise ConfigError(f"search space: {key} cannot have both step and log")
    if low > high:
        raise ConfigError(f"search space: {key}.low ({low}) is greater than {key}.high ({high})")
    if log and low <= 0:
        raise ConfigError(f"search space: {key}.low must be > 0 with log: true, got {low}")
    if kind == "int":
        if not all(float(v).is_integer() for v in (low, high) + ((step,) if step is not None else ())):
            raise ConfigError(f"search space: {key} is an int parameter: low, high and step must be whole numbers")
        low, high, step = int(low), int(high), int(step) if step is not None else None
    return ParamSpec(key, kind, low=low, high=high, log=log, step=step, when=conditions)


def parse_search_space(data: Any, source: str = "search space") -> list[ParamSpec]:
    """Validate a mapping of parameter -> spec; raise `ConfigError` naming the offending key."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source} must be a non-empty mapping of parameter: {{type: ..., ...}}")
    specs: list[ParamSpec] = []
    for key, spec in data.items():
        specs.append(_parse_param(str(key), spec, {s.name for s in specs}))
    return specs


def load_search_space(path: str) -> list[ParamSpec]:
    """Read and validate a search-space YAML file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"search space file not found: {path}")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"search space {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_search_space(data, f"search space {path}")


DEFAULT_SPACE_NAME = "default (cifar_mlflow/tune/search_spaces/default.yaml)"


def search_space_text(path: str | None) -> str:
    """The YAML of the space a study searches: the file given, or the shipped default."""
    if path is None:
        return resources.files("cifar_mlflow.tune").joinpath("search_spaces", "default.yaml").read_text()
    return Path(path).read_text()


def default_search_space() -> list[ParamSpec]:
    """The shipped space: optimizer settings for every arch, model arguments per architecture family."""
    return parse_search_space(yaml.safe_load(search_space_text(None)), "default search space")


def sample_config(space: list[ParamSpec], base: TrainConfig,
                  suggest: Callable[[ParamSpec], Any]) -> tuple[TrainConfig, dict[str, Any]]:
    """A trial's config: `suggest(spec)` for every parameter whose conditions hold.

    Returns:
        The config with the sampled values applied, and the sampled values by parameter name.
    """
    values = dataclasses.asdict(base)  # conditions may refer to the fixed base options
    sampled: dict[str, Any] = {}
    model_args = dict(base.model_args)
    for spec in space:
        if not spec.applies({**values, **sampled}):
            continue
        value = suggest(spec)
        sampled[spec.name] = value
        if spec.name.startswith(MODEL_ARGS_PREFIX):
            model_args[spec.name[len(MODEL_ARGS_PREFIX):]] = value
    changes = {k: v for k, v in sampled.items() if not k.startswith(MODEL_ARGS_PREFIX)}
    return dataclasses.replace(base, **changes, model_args=model_args), sampled
