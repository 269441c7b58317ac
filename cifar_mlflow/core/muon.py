"""Muon for any network: `torch.optim.Muon` on the hidden layers' weights, SGD on the rest.

PyTorch's `Muon` orthogonalises each update (Newton-Schulz) but takes 2-D weights only. A conv
layer's filter bank `(out, in, kh, kw)` is trained here as the `(out, in * kh * kw)` matrix it is
viewed as, as airbench94_muon does; everything else is PyTorch's code. The parameters Muon is not
meant for (biases, normalisation layers, the first layer, which sees pixels, and the last, which
gives the logits) train with SGD and Nesterov momentum, as its authors advise.

PyTorch's Newton-Schulz iteration always computes in bf16. Where bf16 is emulated (a CPU without
AVX-512 BF16, AMX or Arm BF16) that is an order of magnitude slower than fp32, and it dominated a
step; there the same iteration runs in fp32 (`orthogonalise`), the rest of the step as PyTorch's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim._muon import _adjust_lr  # PyTorch's learning rate for a matrix's shape


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


def orthogonalise(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """PyTorch's Newton-Schulz iteration (`torch.optim._muon._zeropower_via_newtonschulz`), operation for
    operation, computed in `dtype` where PyTorch's always computes in bf16: an update of about the
    same direction with orthogonalised singular values, returned in `dtype`."""
    a, b, c = coefficients
    x = update.to(dtype)
    wide = update.size(0) > update.size(1)
    if wide:
        x = x.T
    x.div_(x.norm().clamp(min=eps))  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if wide else x


class FilterBankMuon(torch.optim.Muon):
    """`torch.optim.Muon` that also takes weights of more than two dimensions, each as `as_matrix` views it,
    and orthogonalises in `newton_schulz_dtype` (PyTorch's: bf16; fp32 where bf16 is emulated). With
    `renorm`, each weight is rescaled to norm sqrt(its rows) before its step (airbench94_muon's weight
    normalisation: the weight's size stays fixed, so the step's size relative to it does too)."""

    def __init__(self, params: Any, newton_schulz_dtype: torch.dtype = torch.bfloat16, renorm: bool = False,
                 **options: Any) -> None:
        probe = torch.optim.Muon([torch.zeros(1, 1, requires_grad=True)], **options)  # PyTorch's own checks
        torch.optim.Optimizer.__init__(self, params, probe.defaults)
        self.newton_schulz_dtype = newton_schulz_dtype
        self.renorm = renorm
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon trains weight matrices and filter banks, not a {p.ndim}-D parameter")

    def _init_group(self, group, params_with_grad, grads, muon_momentum_bufs) -> bool:
        has_complex = super()._init_group(group, params_with_grad, grads, muon_momentum_bufs)
        for items in (params_with_grad, grads, muon_momentum_bufs):
            items[:] = [as_matrix(t) for t in items]
        return has_complex

    @torch.no_grad()
    def _renormalise(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.mul_(len(p) ** 0.5 / p.norm().clamp(min=group["eps"]))

    @torch.no_grad()
    def step(self, closure=None):
        if self.renorm:
            self._renormalise()
        if self.newton_schulz_dtype == torch.bfloat16:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:  # PyTorch's single-tensor Muon step, `orthogonalise` in its place
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            lr, momentum = group["lr"], group["momentum"]
            for param, grad, buf in zip(params, grads, bufs):
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                       self.newton_schulz_dtype)
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss


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
    a learning-rate schedule set here is the one they use. Muon's momentum is `muon_momentum` (None:
    `momentum`), its `ns_steps` Newton-Schulz iterations (PyTorch's 5), `renorm` as `FilterBankMuon`'s."""

    def __init__(self, sgd_groups: list[dict], muon_groups: list[dict], *, momentum: float, nesterov: bool,
                 muon_momentum: float | None = None, ns_steps: int = 5, renorm: bool = False,
                 newton_schulz_dtype: torch.dtype = torch.bfloat16) -> None:
        self.sgd = torch.optim.SGD(sgd_groups, lr=sgd_groups[0]["lr"], momentum=momentum,
                                   nesterov=nesterov and momentum > 0)
        self.muon = FilterBankMuon(muon_groups, lr=muon_groups[0]["lr"],
                                   momentum=momentum if muon_momentum is None else muon_momentum,
                                   nesterov=nesterov, weight_decay=muon_groups[0]["weight_decay"], ns_steps=ns_steps,
                                   newton_schulz_dtype=newton_schulz_dtype, renorm=renorm)
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
