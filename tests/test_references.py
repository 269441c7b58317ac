"""The reference re-implementations the fast recipe is measured against (tools/airbench94.py,
tools/airbench94_muon.py): the published settings where they differ from ours, and a whole run each."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, write_imagefolder

sys.path.insert(0, str(ROOT / "tools"))
import airbench94  # noqa: E402
import airbench94_muon  # noqa: E402
from airbench_reference import Net, mixed_sample  # noqa: E402


def test_the_whitening_sample_mixes_classes_stored_in_order() -> None:
    labels = torch.arange(10).repeat_interleave(5000)  # the image folder's order: 5,000 airplanes first
    chosen = mixed_sample(labels, 5000, seed=0)
    assert torch.bincount(labels[chosen], minlength=10).tolist() == [500] * 10
    assert len(set(chosen.tolist())) == 5000


def test_airbench94_trains_the_whitening_bias_at_the_base_rate() -> None:
    model = Net(1 / 9)
    optimizer = airbench94.optimizer_for(model, 1024)
    fast, base = optimizer.param_groups
    assert fast["lr"] == pytest.approx(64 * base["lr"])
    assert {id(p) for p in fast["params"]} == {id(m.bias) for m in model.modules()
                                               if isinstance(m, torch.nn.BatchNorm2d)}
    assert any(p is model.whiten.bias for p in base["params"])
    assert not any(p is model.whiten.weight for g in optimizer.param_groups for p in g["params"])  # frozen


def test_airbench94_muon_orthogonalises_and_renormalises_the_filter_banks() -> None:
    grad = torch.randn(64, 576, generator=torch.Generator().manual_seed(0))
    singular = torch.linalg.svdvals(airbench94_muon.newton_schulz(grad).float())
    assert singular.min() > 0.3 and singular.max() < 1.6  # all directions about equally long
    model = Net(None)
    assert model.head.weight.std().item() == pytest.approx(1.0, rel=1e-4)
    sgd, muon = airbench94_muon.optimizers_for(model, 2000)
    filters = muon.param_groups[0]["params"]
    assert len(filters) == 6 and all(p.ndim == 4 for p in filters)
    with torch.no_grad():
        for p in filters:
            p.mul_(3.0)
            p.grad = torch.ones_like(p)
    muon.step()
    muon.param_groups[0]["lr"] = 0.0
    muon.step()  # a step of size 0 leaves only the renormalisation
    assert all(p.norm().item() == pytest.approx(len(p) ** 0.5, rel=1e-3) for p in filters)


@pytest.mark.parametrize("script", ["airbench94.py", "airbench94_muon.py"])
def test_a_whole_run_on_an_image_folder(tmp_path, script) -> None:
    root = write_imagefolder(tmp_path / "folder", n_train=40, n_test=10)
    out = tmp_path / "result.json"
    probe = ("import os, runpy, sys; sys.argv = sys.argv[1:]; sys.path.insert(0, os.path.dirname(sys.argv[0])); "
             "runpy.run_path(sys.argv[0], run_name='__main__'); "
             "assert not any(m.startswith('cifar_mlflow') for m in sys.modules), 'imports cifar_mlflow'")
    done = subprocess.run([sys.executable, "-c", probe, str(ROOT / "tools" / script), "--data-dir", str(root),
                           "--epochs", "4", "--batch-size", "30", "--device", "cpu", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["test_acc_tta"] >= 0.9 and result["train_seconds"] > 0  # three colour classes, 16 steps
    assert result["precision"] in ("bf16", "fp32") and "epoch 4:" in done.stdout


def test_a_folder_without_train_and_test_is_refused_in_one_line(tmp_path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "airbench94.py"), "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "train" in done.stderr
