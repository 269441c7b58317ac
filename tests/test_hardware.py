"""Precision and memory layout: bf16 where the hardware has it, channels-last where the model takes it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from cifar_mlflow import TrainConfig, prepare
from cifar_mlflow.core.fit import fit
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.hardware import cpu_flags, select_precision, use_channels_last
from cifar_mlflow.models import get_model

CPU = torch.device("cpu")


@pytest.mark.parametrize(("name", "flags", "expected"), [
    ("auto", frozenset({"avx2", "avx512f", "avx512_bf16"}), "bf16"),  # AMD Zen 4+, Intel Cooper Lake+
    ("auto", frozenset({"avx2", "amx_bf16", "amx_tile"}), "bf16"),  # Intel Sapphire Rapids+
    ("auto", frozenset({"fp", "asimd", "bf16"}), "bf16"),  # Arm Neoverse V1+
    ("auto", frozenset({"avx2", "avx512f"}), "fp32"),  # bf16 only emulated: slower than fp32
    ("auto", frozenset(), "fp32"),  # flags unknown (not Linux)
    ("bf16", frozenset(), "bf16"),  # asked for: emulated, but honoured
    ("fp32", frozenset({"avx512_bf16"}), "fp32"),
])
def test_precision_follows_the_cpu(name: str, flags: frozenset[str], expected: str) -> None:
    assert select_precision(name, CPU, flags) == expected


def test_this_machines_cpu_flags_are_read() -> None:
    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    lines = [line for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.split(":")[0].strip() in ("flags", "Features")]  # x86, Arm
    assert lines, "no flags line in /proc/cpuinfo"
    assert cpu_flags() == frozenset(lines[0].split(":", 1)[1].split())  # the first CPU's, every one of them


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown precision 'fp8'; choose one of: auto, bf16, fp16, fp32"):
        prepare(TrainConfig(dataset="synthetic", precision="fp8", device="cpu"))


def test_fp16_on_the_cpu_is_refused_with_what_to_use_instead() -> None:
    with pytest.raises(ConfigError, match="--precision fp16 is for GPUs.*use bf16 .* or fp32"):
        prepare(TrainConfig(dataset="synthetic", precision="fp16", device="cpu"))


def fake_accelerator(monkeypatch, kind: str | None, count: int = 1, cuda_bf16: bool = True) -> None:
    """This machine as if it had `count` accelerators of `kind` (cuda, mps, xpu; None: none). A mock: there is
    no GPU here. It stands in for `torch.accelerator`, which the product asks."""
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: kind is not None)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a: torch.device(kind) if kind else None)
    monkeypatch.setattr(torch.accelerator, "device_count", lambda: count if kind else 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")


@pytest.mark.parametrize(("kind", "asked", "expected"), [
    (None, "auto", "cpu"), ("cuda", "auto", "cuda"), ("mps", "auto", "mps"), ("xpu", "auto", "xpu"),
    ("cuda", "cuda:1", "cuda:1"), ("xpu", "xpu:0", "xpu:0"), ("cuda", "cpu", "cpu")])
def test_the_device_is_the_machines_accelerator(monkeypatch, kind, asked, expected) -> None:
    from cifar_mlflow.hardware import select_device

    fake_accelerator(monkeypatch, kind, count=2)
    assert select_device(asked) == torch.device(expected)


@pytest.mark.parametrize(("kind", "asked", "message"), [
    (None, "cuda", "device cuda requested but it has no accelerator; use --device cpu or auto"),
    ("mps", "cuda", "device cuda requested but its accelerator is mps; use --device cpu or auto"),
    ("cuda", "cuda:2", "device cuda:2 does not exist: this machine has 2 cuda device"),
    ("cuda", "gpu", "unknown device 'gpu'")])
def test_a_device_the_machine_lacks_is_refused(monkeypatch, kind, asked, message) -> None:
    from cifar_mlflow.hardware import select_device

    fake_accelerator(monkeypatch, kind, count=2)
    with pytest.raises(ConfigError, match=re.escape(message)):
        select_device(asked)


@pytest.mark.parametrize(("kind", "cuda_bf16", "asked", "expected"), [
    ("cuda", True, "auto", "bf16"),  # A100, H100, RTX 30xx+
    ("cuda", False, "auto", "fp16"),  # T4, V100: fp16 tensor cores, with a gradient scaler
    ("cuda", False, "fp16", "fp16"), ("cuda", True, "fp32", "fp32"),
    ("xpu", True, "auto", "bf16"), ("mps", True, "auto", "fp32"), ("mps", True, "fp16", "fp16")])
def test_precision_follows_the_gpu(monkeypatch, kind, cuda_bf16, asked, expected) -> None:
    fake_accelerator(monkeypatch, kind, cuda_bf16=cuda_bf16)
    assert select_precision(asked, torch.device(kind)) == expected


def test_bf16_on_a_gpu_without_it_names_fp16(monkeypatch) -> None:
    fake_accelerator(monkeypatch, "cuda", cuda_bf16=False)
    with pytest.raises(ConfigError, match="Tesla T4 has no bf16 arithmetic; use --precision fp16"):
        select_precision("bf16", torch.device("cuda"))


def test_fp16_steps_go_through_the_gradient_scaler_and_an_overflow_is_skipped(imagefolder) -> None:
    """fp16's path, run on the CPU (PyTorch's CPU autocast and scaler take fp16; the command refuses it there
    only because it is slow): the loss is scaled before backward, a step whose gradients overflow is
    skipped instead of writing inf into the weights, and training goes on and learns."""
    from cifar_mlflow.core.fit import _build_loop
    from cifar_mlflow.core.passes import training_pass

    prepared = prepare(TrainConfig(arch="cnn_small", dataset="imagefolder", data_dir=str(imagefolder), epochs=4,
                                   batch_size=16, lr=0.05, progress=False, device="cpu", precision="bf16"))
    prepared.precision = "fp16"
    loop = _build_loop(prepared)
    assert loop.scaler.is_enabled()
    conv = next(m for m in prepared.model.modules() if isinstance(m, nn.Conv2d))
    dtypes, overflow = set(), {"left": 1}

    def poison(grad):  # the first backward overflows, as an fp16 gradient can
        if overflow["left"]:
            overflow["left"] -= 1
            return torch.full_like(grad, float("inf"))
        return grad

    conv.weight.register_hook(poison)
    hook = conv.register_forward_hook(lambda module, args, out: dtypes.add(out.dtype))
    before, scale = conv.weight.detach().clone(), loop.scaler.get_scale()
    first = training_pass(loop.train_model, loop.train_loader, loop.optimizer, loop.schedule, loop.loss_fn,
                          epoch=1, epochs=4, progress=False, precision="fp16", scaler=loop.scaler)
    hook.remove()
    assert dtypes == {torch.float16}
    assert torch.isfinite(conv.weight).all() and not torch.equal(conv.weight, before)  # later steps trained
    assert loop.scaler.get_scale() < scale  # lowered after the overflow
    for epoch in range(2, 5):
        last = training_pass(loop.train_model, loop.train_loader, loop.optimizer, loop.schedule, loop.loss_fn,
                             epoch=epoch, epochs=4, progress=False, precision="fp16", scaler=loop.scaler)
    assert last.loss < first.loss and last.acc > 0.8


class ViewAfterConv(nn.Module):
    """The classic notebook model: `x.view(B, -1)` fails on a channels-last activation."""

    def __init__(self, num_classes: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 32 * 32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.fc(x.view(x.size(0), -1))


def test_channels_last_where_the_model_takes_it() -> None:
    example = torch.zeros(2, 3, 32, 32)
    cnn = get_model("cnn_small", num_classes=10)
    cnn(example)  # lazy layers materialised, as `prepare` does
    assert use_channels_last(cnn, example)
    conv = next(m for m in cnn.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)

    notebook = ViewAfterConv()
    assert not use_channels_last(notebook, example)
    assert notebook.conv.weight.is_contiguous()  # put back as it was
    assert notebook(example).shape == (2, 3)


def test_a_user_model_that_reshapes_with_view_trains(imagefolder, tmp_path, monkeypatch) -> None:
    (tmp_path / "notebook_models.py").write_text(textwrap.dedent("""
        from torch import nn
        class Net(nn.Module):
            def __init__(self, num_classes, in_channels):
                super().__init__()
                self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
                self.fc = nn.Linear(4 * 32 * 32, num_classes)
            def forward(self, x):
                x = self.conv(x).relu()
                return self.fc(x.view(x.size(0), -1))
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "notebook_models", raising=False)
    prepared = prepare(TrainConfig(arch="notebook_models:Net", dataset="imagefolder", data_dir=str(imagefolder),
                                   epochs=2, batch_size=16, lr=0.05, progress=False, device="cpu"))
    assert not prepared.channels_last
    assert fit(prepared).test.acc == 1.0  # 3 classes of distinct colours: any learning tells them apart


def test_bf16_training_on_the_cpu_learns_like_fp32(imagefolder) -> None:
    results = {}
    for precision in ("fp32", "bf16"):
        prepared = prepare(TrainConfig(arch="cnn_small", dataset="imagefolder", data_dir=str(imagefolder),
                                       epochs=3, batch_size=16, lr=0.05, progress=False, device="cpu",
                                       precision=precision))
        assert prepared.precision == precision and prepared.channels_last
        conv = next(m for m in prepared.model.modules() if isinstance(m, nn.Conv2d))
        dtypes = set()
        hook = conv.register_forward_hook(lambda module, args, out: dtypes.add((module.training, out.dtype)))
        results[precision] = fit(prepared)
        hook.remove()
        # the training steps ran their convolutions in the run's precision; the final test, as the logged
        # model, in fp32
        trained = torch.bfloat16 if precision == "bf16" else torch.float32
        assert {d for training, d in dtypes if training} == {trained}
        assert (False, torch.float32) in dtypes
    assert results["bf16"].test.acc > 0.8  # three colour-coded classes are easy, in either precision


# A process that takes a 200 MiB block, frees it and takes it again, as a CPU training step does with its
# activations; prints the page faults the second take cost.
_REUSE = """
import resource, sys, torch
from cifar_mlflow import TrainConfig, prepare
if sys.argv[1] == "prepared":
    prepare(TrainConfig(device="cpu", dataset="imagefolder", data_dir=sys.argv[2], arch="mlp", progress=False))
torch.ones(50 << 20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(50 << 20).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_cpu_run_takes_its_freed_memory_again_without_the_kernel_zeroing_it(imagefolder, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}

    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", _REUSE, mode, str(imagefolder)], env=env, capture_output=True,
                             text=True, check=True, cwd=tmp_path)
        return int(out.stdout.split()[-1])

    pages = (200 << 20) // 4096
    assert faults("plain") > pages // 2  # glibc's default: the block went back to the system, zeroed again
    assert faults("prepared") < pages // 20  # after a CPU run's preparation: the same block, taken again
