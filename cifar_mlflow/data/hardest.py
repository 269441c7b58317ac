"""Which training images a pass draws from: every one at first, then only those the model found hardest.

From pass `from_pass` on (0-based), a pass trains on the `fraction` of the training images whose loss was
highest the last time each was trained on, and skips the rest: the pass costs that much less, and the
images the model already classifies with confidence give up their steps to those it does not. An image
left out keeps its last loss; an image trained on gets its new one, so the set changes from pass to pass.
Under torchrun each process trains on its own share of a pass's images; at the end of the pass the processes
swap what they recorded, so all of them rank the same losses and draw the same pool.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from cifar_mlflow import distributed


class HardestImages:
    """The per-image losses of a training split and the pool of indices each pass draws from.

    Args:
        count: images in the training split.
        fraction: the share of them each pass from `from_pass` on trains on (0 < fraction <= 1).
        from_pass: the first pass (0-based) that draws from the hardest images only; the ones before
            train on every image, so that every image has a loss.
        device: where the losses are kept (the training device).
    """

    def __init__(self, count: int, fraction: float, from_pass: int, device: torch.device) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        if from_pass < 1:
            raise ValueError(f"from_pass must be at least 1 (a full pass first gives every image a loss), "
                             f"got {from_pass!r}")
        self.fraction, self.from_pass = fraction, from_pass
        # Never trained on: the highest loss there is, so such an image is drawn first.
        self.losses = torch.full((count,), float("inf"), device=device)
        self._recorded: list[tuple[torch.Tensor, torch.Tensor]] = []  # this pass's, for the other processes

    def pool_size(self, pass_index: int) -> int:
        """How many images pass `pass_index` (0-based) draws from."""
        count = len(self.losses)
        return count if pass_index < self.from_pass else max(1, round(self.fraction * count))

    def pool(self, pass_index: int) -> torch.Tensor | None:
        """The indices pass `pass_index` draws from (in no particular order), or None for all of them."""
        size = self.pool_size(pass_index)
        if size == len(self.losses):
            return None
        return torch.topk(self.losses, size, sorted=False).indices

    def record(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        """The loss of each image of a training batch, as it was before the batch's step."""
        losses = losses.detach().float()
        self.losses.index_copy_(0, indices, losses)
        if distributed.world_size() > 1:
            self._recorded.append((indices, losses))

    def share(self) -> None:
        """At the end of a pass under torchrun: every process takes in the losses the others recorded (each
        process took the same number of batches of the same size). Call it on every process; alone, it does
        nothing."""
        if distributed.world_size() == 1 or not self._recorded:
            return
        indices, losses = (torch.cat(part) for part in zip(*self._recorded))
        self._recorded.clear()
        self.losses.index_copy_(0, _all_gathered(indices), _all_gathered(losses))

    def state_dict(self) -> dict:
        return {"losses": self.losses}

    def load_state_dict(self, state: dict) -> None:
        self.losses.copy_(state["losses"])


def _all_gathered(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's `tensor` (all of one shape), one after the other."""
    parts = [torch.empty_like(tensor) for _ in range(distributed.world_size())]
    dist.all_gather(parts, tensor)
    return torch.cat(parts)
