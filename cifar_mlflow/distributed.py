"""Data-parallel training under torchrun: which process this is, and summing numbers across them.

Started by `torchrun --nproc_per_node N -m cifar_mlflow.train ...`, every process trains on its
shard of each epoch; sums of losses and counts are all-reduced so every rank sees the same
metrics; only rank 0 talks to MLflow and writes the checkpoint. Started directly, nothing here
does anything.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_type: str) -> None:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU)."""
    if launched_by_torchrun() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    """The element-wise sum over all processes (the values themselves when not distributed)."""
    if world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
