"""Starting from trained weights (`--init-from`): a state dict read from a file, matched to a freshly built
model by name and shape. Tensors whose shape differs (the classifier head, trained for another number of
classes) keep the new model's initialisation: the head is replaced, the rest is fine-tuned.

The names may carry a wrapper's prefix (a logged model is `ImageClassifier(TestTimeAugmented(net))`, whose
tensors are `model.model.NAME`; a DataParallel checkpoint's `module.NAME`): the prefix under which most
names meet the model's is taken off.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cifar_mlflow.errors import ConfigError

# Below this share of the model's tensors found in the source, the weights are for another architecture.
MIN_SHARE_MATCHED = 0.5


@dataclass
class WeightsReport:
    """What `load_matching` did: tensors copied, tensors kept fresh because their shape differs, and the
    model's tensors the source did not have."""

    source: str
    loaded: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # shape differs: the new model's initialisation kept
    missing: list[str] = field(default_factory=list)
    total: int = 0

    def summary(self) -> str:
        text = f"initialised from {self.source}: {len(self.loaded)} of {self.total} tensors"
        if self.replaced:
            text += f"; kept new (another shape, e.g. the head for another class count): {', '.join(self.replaced)}"
        if self.missing:
            text += f"; not in the source: {', '.join(self.missing[:8])}{', ...' if len(self.missing) > 8 else ''}"
        return text


def read_weights_file(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a `.pt`/`.pth` file (a plain state dict, or a checkpoint holding one under
    `state_dict`, `model` or `model_state_dict`) or a `.safetensors` file. Raises `ConfigError`."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"--init-from {path}: no such file; give a weights file, runs:/RUN_ID or "
                          "models:/NAME@ALIAS")
    if file.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(f"--init-from {path}: reading .safetensors needs the safetensors package "
                              "(pip install safetensors, or the timm extra)") from None
        return load_file(str(file))
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(f"--init-from {path}: it holds Python objects besides tensors, and it is read with "
                          "weights_only=True, which runs no code from a file; save model.state_dict() "
                          "instead") from None
    except Exception as exc:  # noqa: BLE001 - not a tensor file
        raise ConfigError(f"--init-from {path}: not a PyTorch weights file ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160]})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"--init-from {path}: expected a state dict (names to tensors)")
    return dict(state)


def _without_prefix(state: Mapping[str, torch.Tensor], names: set[str]) -> dict[str, torch.Tensor]:
    """`state` with the prefix removed under which most of its names are among `names`."""
    prefixes = {""} | {key[:i + 1] for key in state for i, ch in enumerate(key) if ch == "."}
    best = max(prefixes, key=lambda p: (sum(k[len(p):] in names for k in state if k.startswith(p)), -len(p)))
    return {k[len(best):]: v for k, v in state.items() if k.startswith(best)}


def load_matching(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> WeightsReport:
    """Copy the tensors of `state` into `model` where name and shape match. Raises `ConfigError` when fewer
    than half of the model's tensors are found (weights of another architecture)."""
    own = model.state_dict()
    found = _without_prefix(state, set(own))
    report = WeightsReport(source, total=len(own))
    update = {}
    for name, tensor in own.items():
        if name not in found:
            report.missing.append(name)
        elif found[name].shape != tensor.shape:
            report.replaced.append(name)
        else:
            update[name] = found[name].to(dtype=tensor.dtype)
            report.loaded.append(name)
    if len(update) < MIN_SHARE_MATCHED * len(own):
        raise ConfigError(f"--init-from {source}: only {len(update)} of the model's {len(own)} tensors are in it "
                          "by name and shape: weights of another architecture?")
    model.load_state_dict(update, strict=False)
    return report
