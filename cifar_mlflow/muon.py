"""Muon for any network: `torch.optim.Muon` on the hidden layers' weights, SGD on the rest.

PyTorch's `Muon` orthogonalises each update (Newton-Schulz) but takes 2-D weights only. A conv
layer's filter bank `(out, in, kh, kw)` is trained here as the `(out, in * kh * kw)` matrix it is
viewed as, as airbench94_muon does; everything else is PyTorch's code. The parameters Muon is not
meant for (biases, normalisation layers, the first layer, which sees pixels, and the last, which
gives the logits) train with SGD and Nesterov momentum, as its authors advise.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """A 2-D view of a weight (rows: output units) sharing its storage, so an update of the view updates
    the weight. A channels-last filter bank is viewed as `(out, kh * kw * in)`: the columns in another
    order, which orthogonalisation does not mind (it works on `G @ G.T`)."""
    if t.ndim == 2:
        return t
    if t.is_contiguous():
        return t.view(t.shape[0], -1)
    if t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).view(t.shape[0], -1)
    raise ValueError(f"cannot view a weight of shape {tuple(t.shape)} and strides {t.stride()} as a matrix")


class FilterBankMuon(torch.optim.Muon):
    """`torch.optim.Muon` that also takes weights of more than two dimensions, each as `as_matrix` views it."""

    def __init__(self, params: Any, **options: Any) -> None:
        probe = torch.optim.Muon([torch.zeros(1, 1, requires_grad=True)], **options)  # PyTorch's own checks
        torch.optim.Optimizer.__init__(self, params, probe.defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon trains weight matrices and filter banks, not a {p.ndim}-D parameter")

    def _init_group(self, group, params_with_grad, grads, muon_momentum_bufs) -> bool:
        has_complex = super()._init_group(group, params_with_grad, grads, muon_momentum_bufs)
        for items in (params_with_grad, grads, muon_momentum_bufs):
            items[:] = [as_matrix(t) for t in items]
        return has_complex


def hidden_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights Muon trains: every trainable weight of 2 or more dimensions but the first and the last
    (in the order the model registers them: its input layer, trainable or not, and its classifier)."""
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        raise ValueError("the model has lazy layers: run it once before building its optimizer")
    weights = [p for p in model.parameters() if p.ndim >= 2]  # a frozen first layer is the first layer too
    return [p for p in weights[1:-1] if p.requires_grad]


class MuonWithSGD(torch.optim.Optimizer):
    """One optimizer for the schedulers, two inside: SGD (with Nesterov momentum) on `sgd_groups`, then
    `FilterBankMuon` on `muon_groups`. Its `param_groups` are theirs (the same dicts, SGD's first), so
    a learning-rate schedule set here is the one they use."""

    def __init__(self, sgd_groups: list[dict], muon_groups: list[dict], *, momentum: float, nesterov: bool) -> None:
        self.sgd = torch.optim.SGD(sgd_groups, lr=sgd_groups[0]["lr"], momentum=momentum,
                                   nesterov=nesterov and momentum > 0)
        self.muon = FilterBankMuon(muon_groups, lr=muon_groups[0]["lr"], momentum=momentum,
                                   nesterov=nesterov, weight_decay=muon_groups[0]["weight_decay"])
        super().__init__(self.sgd.param_groups + self.muon.param_groups, {"lr": sgd_groups[0]["lr"],
                                                                          "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.sgd.step()
        self.muon.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"sgd": self.sgd.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.sgd.load_state_dict(state_dict["sgd"])
        self.muon.load_state_dict(state_dict["muon"])
