"""What this machine runs a model with: the device, the arithmetic precision and the memory layout."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import torch
from torch import nn

from cifar_mlflow.errors import ConfigError

# CPU feature flags of native bf16 arithmetic: x86 AVX-512 BF16 and AMX, Arm's BF16 extension.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def accelerator() -> torch.device | None:
    """This machine's accelerator (CUDA, Apple MPS, Intel XPU, ...), as `torch.accelerator` finds it; None
    where there is none."""
    if not torch.accelerator.is_available():
        return None
    return torch.accelerator.current_accelerator()


def select_device(name: str) -> torch.device:
    """`--device`: auto (the accelerator, else the CPU), cpu, or an accelerator by type (cuda, mps, xpu) and
    index. Raises `ConfigError` for one this machine does not have."""
    found = accelerator()
    if name == "auto":
        return torch.device(found.type) if found is not None else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N, mps, xpu or xpu:N") from None
    if device.type == "cpu":
        return device
    if found is None or found.type != device.type:
        here = f"its accelerator is {found.type}" if found is not None else "it has no accelerator"
        raise ConfigError(f"device {name} requested but {here}; use --device cpu or auto")
    count = torch.accelerator.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"device {name} does not exist: this machine has {count} {device.type} device(s)")
    return device


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (x86 `flags`, Arm `Features`); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


# glibc's allocator settings that keep a training step's freed memory for the next step, by name: the
# mallopt(3) parameter that sets each, and its value. `MALLOC_<name>_` sets the same in the environment.
KEEP_FREED_MEMORY = {"MMAP_THRESHOLD": (-3, 1 << 30), "TRIM_THRESHOLD": (-1, 1 << 30), "TOP_PAD": (-2, 64 << 20)}


def keep_freed_memory_environment() -> dict[str, str]:
    """The environment variables that give another process (the references in tools/) the same setting."""
    return {f"MALLOC_{name}_": str(value) for name, (_, value) in KEEP_FREED_MEMORY.items()}


def keep_freed_memory() -> bool:
    """Have glibc's allocator keep the memory a training step frees, for the next step to take again.

    By default glibc gives every block of more than 32 MiB straight back to the system when it is freed
    (`munmap`), and a CPU training step frees and takes back blocks of that size every step (airbench's
    activations at batch 1024 are 134 MiB each), so each step pays the kernel to zero them again, page by
    page: on a 2-core Xeon that was 10-14% of the fast recipe's epoch (docs/benchmarks.md). Blocks of up to
    1 GiB now come from the heap, whose top is kept (not trimmed) up to 1 GiB. The process keeps its peak
    memory while it lives, as PyTorch's CUDA allocator does. Left alone where the user tuned glibc's
    allocator (a `MALLOC_*` variable or `GLIBC_TUNABLES`) or where the C library has no `mallopt` (macOS,
    Windows); a preloaded jemalloc or tcmalloc ignores it. Returns whether it was set.
    """
    if "GLIBC_TUNABLES" in os.environ or any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in KEEP_FREED_MEMORY.values())


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (before reading a clock); nothing to wait for on the CPU."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


# What `--precision auto` picks on an accelerator other than CUDA: Intel GPUs compute bf16 natively; PyTorch's
# autocast on Apple's MPS covers fewer operations, so it trains in fp32 unless asked.
_AUTO_PRECISION = {"xpu": "bf16", "mps": "fp32"}


def select_precision(name: str, device: torch.device, flags: frozenset[str] | None = None) -> str:
    """The precision a run computes in: "bf16" or "fp16" (autocast; fp16 with a gradient scaler) or "fp32".

    auto is bf16 where the hardware has it natively (a CUDA GPU with bf16, an Intel GPU, a CPU with AVX-512
    BF16, AMX or Arm BF16: 2-3x faster than fp32 there), fp16 on a CUDA GPU without bf16 (T4, V100: its
    tensor cores), fp32 elsewhere (a CPU without native bf16, where emulated bf16 is slower, and MPS).

    Args:
        name: auto, bf16, fp16 or fp32 (`--precision`).
        device: where the run computes.
        flags: the CPU's feature flags (default: this machine's).
    """
    if name == "fp32":
        return "fp32"
    if device.type == "cpu":
        if name == "fp16":
            raise ConfigError("--precision fp16 is for GPUs: a CPU computes fp16 slowly and without a gradient "
                              "scaler's protection; use bf16 (native on CPUs with AVX-512 BF16, AMX or Arm BF16) "
                              "or fp32")
        native = bool(NATIVE_BF16_FLAGS & (cpu_flags() if flags is None else flags))
        return "bf16" if name == "bf16" or native else "fp32"
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
        if name == "bf16" and not native:
            raise ConfigError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 "
                              "arithmetic; use --precision fp16 (with a gradient scaler), fp32 or auto")
        if name == "auto":
            return "bf16" if native else "fp16"
        return name
    return _AUTO_PRECISION.get(device.type, "fp32") if name == "auto" else name


def use_channels_last(model: nn.Module, example: torch.Tensor) -> bool:
    """Put `model` in channels-last layout (faster convolutions on GPUs and CPUs alike) if it takes
    channels-last batches; a model that reshapes with `.view` after a convolution does not, and stays
    as it is. Returns whether batches should be channels-last.

    Args:
        model: with its lazy layers materialised (one forward pass done).
        example: a batch it takes, (B, C, H, W).
    """
    if example.dim() != 4:
        return False
    model.to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            model(example.contiguous(memory_format=torch.channels_last))
    except RuntimeError:
        model.to(memory_format=torch.contiguous_format)
        return False
    return True
