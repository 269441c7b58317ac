"""The one typed configuration of a training run.

`TrainConfig` is the single source of truth: the command line is generated from it
(`cifar_mlflow.arguments`), the MLproject parameters use its field names, it is logged as MLflow
params, saved in checkpoints, and the tuner changes it with `dataclasses.replace`.

Fields whose default is `None` and whose help says "recommended" are filled in per
architecture by `resolve_config` (`recommended_for`: the settings each model registers beside its
builder, `GENERIC_RECOMMENDED` for the others); anything the user sets wins.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from cifar_mlflow.errors import ConfigError

DATASETS = ("cifar10", "cifar100", "fashion_mnist", "mnist", "svhn", "imagefolder", "synthetic")
OPTIMIZERS = ("sgd", "adam", "adamw", "muon")
SCHEDULERS = ("onecycle", "linear", "cosine", "step", "plateau", "none")
AUGMENTS = ("none", "flip", "light", "standard", "strong")
FLIPS = ("random", "alternating")
TTAS = ("none", "flip", "flip_translate")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEFAULT_ARCH = "cnn"

# Recipes: settings that sit above the per-architecture ones (an option given by the user still wins).
RECIPE_SETTINGS: dict[str, dict[str, Any]] = {
    # airbench-class training, as airbench94_muon trains (its net, Muon with renormalised filter banks and
    # momentum 0.6, 3 Newton-Schulz steps, no warm-up and no lookahead, the schedule ending at 0, decayed
    # biases) at airbench94's batch of 1024 for 8 epochs, the last 5 on the 68% of the images with the highest
    # loss only, on the whole training set (no validation split), flip + translate test-time augmentation;
    # the net's own recommendations do the rest. Chosen on a validation split, measured on test against
    # airbench94 and airbench94_muon re-implemented (tools/): docs/benchmarks.md, "The fast recipe against the
    # published recipes".
    "fast": dict(arch="airbench", optimizer="muon", epochs=8, val_fraction=0.0, tta="flip_translate",
                 # tuned for its net: left out when another --arch is given (that net's recommendations instead)
                 for_its_net=dict(batch_size=1024, hard_fraction=0.68, hard_from_epoch=4, lr=1.656,
                                  weight_decay=1.208e-3, muon_lr=0.24, muon_momentum=0.6, muon_ns_steps=3,
                                  muon_renorm=True, warmup_epochs=0.0, lookahead=False, lr_end=0.0,
                                  # a key given in --model-args wins
                                  model_args=dict(pool_size=3, whiten_centred=False, whiten_bias_epochs=3,
                                                  decay_biases=True, whiten_bias_lr_scale=64))),
}
RECIPES = tuple(RECIPE_SETTINGS)
# Every image in every epoch unless a recipe or the user says otherwise (`--hard-fraction`).
HARDEST_DEFAULTS: dict[str, Any] = dict(hard_fraction=1.0, hard_from_epoch=2)


def _field(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field carrying its `--help` text (and optional `choices`)."""
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class TrainConfig:
    """Everything that defines a training run."""

    # Recipe and model
    recipe: str | None = _field(None, "a complete set of settings to start from; every "
                                "option given on its own still wins. fast: airbench94's net trained as "
                                "airbench94_muon trains it (Muon on the filter banks, the schedule down to 0) at "
                                "batch 1024 for 8 epochs (the last 5 on the hardest 68% of the images) on the whole "
                                "training set, test-time augmentation (docs/architectures.md; measured: "
                                "docs/benchmarks.md)", choices=RECIPES)
    arch: str | None = _field(None, "model: a registered name (see --list-models), tv:NAME for any "
                              "torchvision classifier, timm:NAME for any timm model (the timm extra), or "
                              "package.module:function for your own builder (default: "
                              f"{DEFAULT_ARCH}, or the net the recipe recommends)")
    model_args: dict = _field({}, "JSON object of keyword arguments for the model builder, "
                              "e.g. '{\"width_mult\": 0.5}'")
    init_from: str | None = _field(None, "start from trained weights instead of random ones: a run's model "
                                   "(runs:/RUN_ID), a registered model (models:/NAME@ALIAS or models:/NAME/VERSION) "
                                   "or a weights file (.pt/.pth state dict or .safetensors, e.g. torchvision's or "
                                   "timm's). Tensors matched by name and shape; the classifier head of another "
                                   "class count is replaced (default: random initialisation)")
    # Data
    dataset: str = _field("cifar10", "data set", choices=DATASETS)
    data_dir: str = _field("./data", "where the data set lives (torchvision downloads go here; "
                           "for imagefolder: the folder holding train/ and test/)")
    image_size: int | None = _field(None, "resize images to this square size (default: keep "
                                    "the data set's size)")
    val_fraction: float | None = _field(None, "fraction of the training set held out for "
                                        "validation (stratified, seeded; 0: train on all of it, "
                                        "no validation, the last epoch's weights are kept); "
                                        "default: 0.1, or the recipe's")
    max_train_samples: int | None = _field(None, "cap the training split (quick runs)")
    max_eval_samples: int | None = _field(None, "cap the validation and test splits (quick runs)")
    augment: str | None = _field(None, "augmentation preset: none, flip (horizontal flips only), "
                                 "light (2-pixel translate + flip), standard (4-pixel crop + flip) or strong "
                                 "(adds colour jitter, rotation, erasing); default: recommended for the arch",
                                 choices=AUGMENTS)
    flip: str | None = _field(None, "horizontal flips of the augmentation presets: random (each "
                              "image with probability 1/2 every epoch) or alternating (airbench's: "
                              "a random half in the first epoch, then each image mirrored in every "
                              "other epoch, so consecutive epochs see both sides of every image); "
                              "default: recommended for the arch", choices=FLIPS)
    low_res_epochs: float = _field(0.0, "progressive resizing: train the first this many epochs (fractions "
                                   "allowed) on batches scaled down to --low-res-size, cheaper per image, and the "
                                   "rest at full size (evaluation always at full size); 0: off")
    low_res_size: int | None = _field(None, "the square image size of the --low-res-epochs (below the "
                                      "images' size; a net with a fixed final pool needs a size it can take)")
    hard_fraction: float | None = _field(None, "train each epoch from --hard-from-epoch on only on this fraction "
                                         "of the training images, those whose loss was highest when last trained on "
                                         "(each such epoch costs that much less; the learning-rate schedule spans "
                                         "the steps actually taken); 1: every image in every epoch; default: 1, or "
                                         "the recipe's")
    hard_from_epoch: int | None = _field(None, "the first epoch that trains on the --hard-fraction of hardest "
                                         "images only (the epochs before train on every image, so that each has a "
                                         "loss; past --epochs: none does); default: 2, or the recipe's")
    tta: str | None = _field(None, "test-time augmentation of evaluation and of the logged "
                             "model: none, flip (average with the mirror image) or "
                             "flip_translate (also 1-pixel shifts); default: none, or the "
                             "recipe's", choices=TTAS)
    # Optimisation
    epochs: int | None = _field(None, "number of epochs; default: recommended for the arch")
    batch_size: int | None = _field(None, "mini-batch size; default: recommended for the arch")
    optimizer: str | None = _field(None, "optimizer (muon: torch.optim.Muon on the hidden layers' weight "
                                   "matrices and conv filter banks at --muon-lr, SGD with Nesterov momentum "
                                   "at --lr on the rest: biases, norm layers, the first and last layers); "
                                   "default: recommended for the arch", choices=OPTIMIZERS)
    lr: float | None = _field(None, "peak learning rate; default: recommended for the arch")
    muon_lr: float | None = _field(None, "peak learning rate of the weights Muon trains (--optimizer muon); "
                                   "default: recommended for the arch, else 0.02")
    momentum: float | None = _field(None, "SGD (and Muon) momentum; default: recommended for the arch")
    muon_momentum: float | None = _field(None, "momentum of the weights Muon trains (Nesterov); default: "
                                         "recommended for the arch, else --momentum")
    muon_ns_steps: int | None = _field(None, "Newton-Schulz iterations that orthogonalise each Muon update "
                                       "(PyTorch's 5; airbench94_muon's 3); default: recommended for the arch")
    muon_renorm: bool | None = _field(None, "before each Muon step, rescale every weight Muon trains to norm "
                                      "sqrt(its output units), as airbench94_muon does (its size then stays "
                                      "fixed and the learning rate sets the angle of each step); default: "
                                      "recommended for the arch")
    nesterov: bool = _field(True, "use Nesterov momentum with SGD")
    weight_decay: float | None = _field(None, "weight decay (not applied to biases and norm "
                                        "layers); default: recommended for the arch")
    scheduler: str | None = _field(None, "learning-rate schedule (linear: warm-up from 0.2x, "
                                   "then straight down to --lr-end); default: recommended for the arch",
                                   choices=SCHEDULERS)
    warmup_epochs: float | None = _field(None, "warm-up length of the cosine and linear "
                                         "schedules; default: recommended for the arch")
    lr_end: float | None = _field(None, "linear schedule: the learning rate it ends at, as a fraction of --lr "
                                  "(and of --muon-lr): airbench94's 0.07, or 0 to decay to nothing as "
                                  "airbench94_muon and the fast recipe do; default: 0.07, or the recipe's")
    lr_step_size: int | None = _field(None, "step schedule: epochs between decays (default: a "
                                      "third of the epochs)")
    lr_gamma: float = _field(0.1, "step and plateau schedules: factor the lr is multiplied by")
    lr_patience: int = _field(2, "plateau schedule: epochs without improvement before decaying")
    label_smoothing: float | None = _field(None, "label smoothing of the cross-entropy loss; "
                                           "default: recommended for the arch")
    lookahead: bool | None = _field(None, "every 5 steps, move the weights to a running average of "
                                    "themselves whose weight grows over the run, and end on that "
                                    "average (airbench's lookahead); default: recommended for the arch")
    grad_clip: float | None = _field(None, "clip the gradient norm to this value (default: off)")
    patience: int | None = _field(None, "early stopping: epochs without a better val_acc "
                                  "before stopping (default: off)")
    # Hardware and reproducibility
    device: str = _field("auto", "auto (the machine's accelerator: CUDA, Apple MPS or Intel XPU, else the CPU), "
                         "cpu, cuda, cuda:N, mps, xpu or xpu:N")
    precision: str = _field("auto", "arithmetic of training and validation: bf16 or fp16 (autocast; fp16 with a "
                            "gradient scaler, GPUs only) or fp32; auto is bf16 where the hardware has it natively "
                            "(CUDA GPUs with bf16, Intel GPUs, CPUs with AVX-512 BF16, AMX or Arm BF16), fp16 on "
                            "CUDA GPUs without bf16 (T4, V100), fp32 elsewhere. The final test and the logged "
                            "model are fp32", choices=PRECISIONS)
    compile: bool = _field(False, "torch.compile the model (CUDA)")
    seed: int = _field(0, "random seed for the split, initialisation and augmentation")
    deterministic: bool = _field(False, "use deterministic algorithms (slower on CUDA)")
    progress: bool = _field(True, "show a progress bar per epoch (--no-progress for log files)")
    # Tracking
    experiment_name: str | None = _field(None, "MLflow experiment (default: the data set's name; "
                                         "under `mlflow run` its own experiment wins)")
    run_name: str | None = _field(None, "MLflow run name (default: e.g. cnn-sgd-lr0.0966-e30-s0)")
    tracking_uri: str | None = _field(None, "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                      "else sqlite:///mlflow.db)")
    log_model: bool = _field(True, "log the trained model: uint8 images in, class names and probabilities "
                             "(pyfunc) or logits (pytorch) out")
    system_metrics: bool = _field(True, "log MLflow's system metrics with the run: CPU, memory, disk and "
                                  "network every 10 s, and GPU utilisation, memory and power where there "
                                  "is an NVIDIA GPU")
    register_model: str | None = _field(None, "NAME or NAME@ALIAS: register the logged model under NAME and point "
                                        "ALIAS (default: candidate) at the new version, so that "
                                        "models:/NAME@ALIAS loads it (the tuner's best: champion)")
    checkpoint_dir: str = _field("./checkpoints", "where the resumable per-run checkpoint is kept")
    resume: str | None = _field(None, "MLflow run id of an interrupted run to continue from its "
                                "checkpoint")
    from_run: str | None = _field(None, "MLflow run id of a run to train again: its params become the "
                                  "options (any option given here wins), its code commit and data digest "
                                  "are checked against today's (a warning when they differ), and a new run "
                                  "named RUN_NAME-rerun goes into the same experiment")


# The settings of tv: classifiers and user builders; built-in models carry their own, next to their
# builder (`@register_model(name, recommended=...)`, in cifar_mlflow/models/).
GENERIC_RECOMMENDED: dict[str, Any] = dict(optimizer="sgd", lr=0.05, weight_decay=5e-4, scheduler="onecycle",
                                           epochs=30, batch_size=128, augment="standard", label_smoothing=0.0)


# Settings every architecture gets when its own recommendations leave them out.
COMMON_SETTINGS = dict(momentum=0.9, muon_lr=0.02, muon_ns_steps=5, muon_renorm=False, warmup_epochs=1.0,
                       lr_end=0.07, val_fraction=0.1, tta="none", lookahead=False, flip="random")

def recommended_for(arch: str) -> dict[str, Any]:
    """The recommended settings for `arch`: its own (registered with the model), else the generic ones
    (tv: and user models), over the common ones."""
    from cifar_mlflow.models import recommended_settings  # the registry is filled when models import

    own = recommended_settings(arch)
    unknown = sorted(set(own or {}) - set(TrainConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"model {arch!r} was registered recommending {', '.join(unknown)}, which "
                          f"{'is no training option' if len(unknown) == 1 else 'are no training options'}; "
                          "fix its register_model(recommended=...)")
    return {**COMMON_SETTINGS, **(own or GENERIC_RECOMMENDED)}


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


def build_config(values: dict[str, Any]) -> TrainConfig:
    """A `TrainConfig` from user-given values (YAML or CLI), rejecting unknown keys."""
    names = {f.name for f in config_fields()}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown option {unknown[0]!r}; valid options: {', '.join(sorted(names))}")
    values = dict(values)
    if isinstance(values.get("model_args"), str):
        values["model_args"] = parse_model_args(values["model_args"])
    return TrainConfig(**values)


def model_args_param(value: dict[str, Any]) -> str:
    """`model_args` as a run's param: the JSON `--model-args` takes, so the UI's value can be pasted back."""
    return json.dumps(value)


def config_yaml(config: TrainConfig) -> str:
    """The config as the run's `config.yaml` artifact records it (and `--print-config` shows it): every
    option in declaration order, passwords masked."""
    import yaml

    from cifar_mlflow.redaction import redact

    return yaml.safe_dump(redact(config_to_dict(config)), sort_keys=False)


def config_params(config: TrainConfig) -> dict[str, Any]:
    """The config as MLflow params, as every run and a study's parent run log it: each option by its name,
    `model_args` as one JSON param and each of its keys as `model_args.KEY` (so runs can be filtered by one)."""
    params: dict[str, Any] = {}
    for key, value in config_to_dict(config).items():
        if key == "model_args":
            params[key] = model_args_param(value)
            params.update({f"model_args.{k}": v for k, v in value.items()})
        else:
            params[key] = value
    return params


def parse_model_args(text: str) -> dict[str, Any]:
    """`model_args` given as a JSON object string (empty means no arguments)."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model_args is not valid JSON ({exc.msg} at position {exc.pos}): {text!r}; "
                          "expected an object such as '{\"dropout\": 0.2}'") from None
    if not isinstance(value, dict):
        raise ConfigError(f"model_args must be a JSON object such as '{{\"dropout\": 0.2}}', got {text!r}")
    return value


def unset_in(config: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """Those of `settings` that `config` leaves unset (None): what a recipe or a default may fill in."""
    return {k: v for k, v in settings.items() if getattr(config, k) is None}


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fill what the user left unset from the recipe, then from the architecture's recommendations; validate
    (the architecture's name too). Raises `ConfigError`. A config this returned comes back as it is: it is
    resolved once, however many steps (the command's early check, `prepare`) ask for it."""
    if getattr(config, "_resolved", False):
        return config
    check_choices(config)  # before the recipe and the recommendations are looked up by name
    recipe = dict(RECIPE_SETTINGS.get(config.recipe, {}))
    for_its_net = dict(recipe.pop("for_its_net", {}))
    config = dataclasses.replace(config, **unset_in(config, recipe))
    if config.arch is None:
        config = dataclasses.replace(config, arch=DEFAULT_ARCH)
    if for_its_net and config.arch == recipe.get("arch"):
        model_args = {**for_its_net.pop("model_args", {}), **config.model_args}
        config = dataclasses.replace(config, model_args=model_args, **unset_in(config, for_its_net))
    from cifar_mlflow.models.registry import check_model_name  # (the registry reads this module)

    check_model_name(config.arch)  # an unknown name would silently get the generic recommendations
    recommended = recommended_for(config.arch)
    filled = unset_in(config, recommended)
    if config.epochs is not None:  # a budget the recommendations were not made for
        filled.update(scaled_to_budget(filled, config.epochs / recommended["epochs"]))
    resolved = dataclasses.replace(config, **filled)
    if resolved.muon_momentum is None:
        resolved = dataclasses.replace(resolved, muon_momentum=resolved.momentum)
    resolved = dataclasses.replace(resolved, **unset_in(resolved, HARDEST_DEFAULTS))
    validate_config(resolved)
    object.__setattr__(resolved, "_resolved", True)  # not a field: `dataclasses.replace` makes one to resolve again
    return resolved


def with_tracking_uri(config: TrainConfig, uri: str | None) -> TrainConfig:
    """`config` logging to `uri` (its credentials moved out): where a run is logged changes nothing that
    resolution fills in, so a resolved config stays resolved."""
    changed = dataclasses.replace(config, tracking_uri=uri)
    if getattr(config, "_resolved", False):
        object.__setattr__(changed, "_resolved", True)
    return changed


# Augmentation presets from none to the strongest: a short run steps down this ladder.
AUGMENT_LADDER = ("none", "flip", "light", "standard", "strong")


def scaled_to_budget(filled: dict[str, Any], share: float) -> dict[str, Any]:
    """The recommended settings `filled` in (those the user left unset), for a run of `share` of the
    recommended epochs: the warm-up keeps its share of the run, and below half the epochs the augmentation
    gets lighter (crops slow a short run's fit more than they help it generalise: measured in
    docs/results.md), down to flips only below a fifth. The one-cycle schedule scales by itself."""
    if share >= 1.0:
        return {}
    scaled = {}
    if "warmup_epochs" in filled:
        scaled["warmup_epochs"] = round(filled["warmup_epochs"] * share, 3)
    if filled.get("augment") in AUGMENT_LADDER and share < 0.5:
        level = AUGMENT_LADDER.index(filled["augment"])
        flips = AUGMENT_LADDER.index("flip")
        lighter = flips if share < 0.2 else level - 1
        scaled["augment"] = AUGMENT_LADDER[max(min(level, flips), min(level, lighter))]  # flips stay
    return scaled


def check_choices(config: Any) -> None:
    """`ConfigError` for the first field of a config dataclass whose value is not one of its `choices`."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices and value is not None and value not in choices:
            raise ConfigError(f"unknown {f.name} {value!r}; choose one of: {', '.join(choices)}")


def validate_config(config: TrainConfig) -> None:
    """Raise `ConfigError` with a message saying what is allowed for the first bad value."""
    check_choices(config)

    def positive(name: str, allow_none: bool = False) -> None:
        value = getattr(config, name)
        if value is None and allow_none:
            return
        if value is None or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{name} must be a positive number, got {value!r}")

    positive("lr")
    positive("muon_lr")
    positive("muon_ns_steps")
    positive("batch_size")
    positive("epochs")
    for name in ("image_size", "low_res_size", "max_train_samples", "max_eval_samples", "lr_step_size",
                 "grad_clip", "patience"):
        positive(name, allow_none=True)
    if not 0.0 <= config.val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be at least 0 and below 1, got {config.val_fraction!r}")
    if config.weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {config.weight_decay!r}")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {config.label_smoothing!r}")
    for name in ("momentum", "muon_momentum"):
        if not 0.0 <= getattr(config, name) < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {getattr(config, name)!r}")
    if config.warmup_epochs < 0:
        raise ConfigError(f"warmup_epochs must be >= 0, got {config.warmup_epochs!r}")
    if not (isinstance(config.low_res_epochs, (int, float)) and 0.0 <= config.low_res_epochs < config.epochs):
        raise ConfigError(f"low_res_epochs must be at least 0 and below --epochs ({config.epochs}), so that the "
                          f"last epochs train at the size evaluation sees; got {config.low_res_epochs!r}")
    if config.low_res_epochs > 0 and config.low_res_size is None:
        raise ConfigError("low_res_epochs needs --low-res-size, the image size of those epochs (for 32x32 images, "
                          "e.g. --low-res-size 28)")
    if config.low_res_size is not None and config.low_res_epochs == 0:
        raise ConfigError(f"low_res_size {config.low_res_size} does nothing without --low-res-epochs, the number of "
                          "first epochs to train at that size: give it too, or leave out --low-res-size")
    if not (isinstance(config.hard_fraction, (int, float)) and 0.0 < config.hard_fraction <= 1.0):
        raise ConfigError(f"hard_fraction must be above 0 and at most 1 (the share of the training images the later "
                          f"epochs train on; 1: all of them), got {config.hard_fraction!r}")
    if not (isinstance(config.hard_from_epoch, int) and config.hard_from_epoch >= 2):
        raise ConfigError(f"hard_from_epoch must be at least 2 (one epoch over every image first), got "
                          f"{config.hard_from_epoch!r}")
    if not 0.0 <= config.lr_end <= 1.0:
        raise ConfigError(f"lr_end must be in [0, 1] (a fraction of --lr), got {config.lr_end!r}")
    if not isinstance(config.model_args, dict):
        raise ConfigError("model_args must be a JSON object such as '{\"dropout\": 0.2}'")
    if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", config.device):
        raise ConfigError(f"unknown device {config.device!r}; use auto, cpu, cuda, cuda:N, mps, xpu or xpu:N")
    if config.register_model is not None:
        registered_name_and_alias(config.register_model)


DEFAULT_MODEL_ALIAS = "candidate"  # what --register-model NAME points at the new version


def registered_name_and_alias(value: str, default_alias: str = DEFAULT_MODEL_ALIAS) -> tuple[str, str]:
    """`--register-model NAME[@ALIAS]` as (name, alias); raises `ConfigError` for a name or alias MLflow refuses."""
    name, _, alias = value.partition("@")
    alias = alias or default_alias
    if not name.strip():
        raise ConfigError(f"register_model needs a model name (NAME or NAME@ALIAS), got {value!r}")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ConfigError(f"model alias {alias!r}: letters, digits, - and _ only, and not 'latest' or v<number> "
                          "(MLflow reserves them)")
    return name, alias


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def default_run_name(config: TrainConfig) -> str:
    """A readable run name such as `cnn-sgd-lr0.0966-e30-s0`."""
    arch = config.arch.replace(":", "-").replace(".", "-")
    return f"{arch}-{config.optimizer}-lr{config.lr:g}-e{config.epochs}-s{config.seed}"
