"""The reference re-implementations the fast recipe is measured against (tools/airbench94.py,
tools/airbench94_muon.py): the published settings where they differ from ours, and a whole run each."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest
import torch

from cifar_mlflow import TrainConfig
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


def test_the_product_configured_as_airbench94_muon_takes_the_references_steps(monkeypatch) -> None:
    """The training command's options for airbench94_muon's settings (docs/benchmarks.md, "The product
    configured as airbench94_muon") give the reference's net and optimizer: from the same weights and
    batches, the same weights after every step. Newton-Schulz in fp32 on both sides (the reference's bf16
    rounds differently from PyTorch's); the product's decoupled decay of the filter banks, which the next
    step's renormalisation undoes, set to 0."""
    threads = torch.get_num_threads()  # one thread: the same order of sums on both sides, run to run
    torch.set_num_threads(1)
    try:
        _compare_steps(monkeypatch)
    finally:
        torch.set_num_threads(threads)


def _compare_steps(monkeypatch) -> None:
    from cifar_mlflow.config import TrainConfig, resolve_config
    from cifar_mlflow.core.optimizers import build_optimizer, build_schedule
    from cifar_mlflow.models import get_model

    monkeypatch.setattr(airbench94_muon, "newton_schulz", functools.partial(airbench94_muon.newton_schulz,
                                                                           dtype=torch.float32))
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(64, 3, 32, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    torch.manual_seed(0)
    reference = Net(None, widths=(16, 32, 256))  # the head's 256 inputs, as published
    reference.init_whiten(images)
    sgd, muon = airbench94_muon.optimizers_for(reference, len(images))
    hyp = airbench94_muon.HYP
    args = {"widths": [16, 32, 256], "pool_size": 3, "whiten_centred": False, "decay_biases": True,
            "whiten_bias_lr_scale": 64}
    lr = hyp["bias_lr"] * len(images) / 64  # the batch-norm biases' rate per image-averaged loss, over their 64x
    config = resolve_config(TrainConfig(
        recipe="fast", batch_size=len(images), epochs=8, lr=lr,
        weight_decay=hyp["weight_decay_per_image"] * len(images) / lr,
        muon_lr=hyp["muon_lr"], muon_momentum=hyp["muon_momentum"], muon_ns_steps=3, muon_renorm=True,
        momentum=hyp["sgd_momentum"], warmup_epochs=0, lr_end=0, lookahead=False, model_args=args))
    product = get_model("airbench", **config.model_args)
    ref_state = reference.state_dict()  # views of the reference's tensors, so they follow its steps

    def reference_name(name: str) -> str:  # groups.0 -> layers.1: the reference's layers start with its GELU
        if name.startswith("groups."):
            index, rest = name[len("groups."):].split(".", 1)
            return f"layers.{int(index) + 1}.{rest}"
        return name

    # The product's head: weights x 1/9; the reference's: unit weights / its 256 inputs. At 256 inputs the two
    # rates (the product's --lr / 9^2, the reference's head_lr x batch / 256^2) are the same.
    head_ratio = 9.0 / 256

    def in_product_units(name: str, reference_tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return reference_tensors[reference_name(name)] * (head_ratio if name == "head.weight" else 1)

    with torch.no_grad():
        for name, tensor in product.state_dict().items():
            tensor.copy_(in_product_units(name, ref_state))
    optimizer = build_optimizer(config, product, "fp32")
    for group in optimizer.muon.param_groups:
        group["weight_decay"] = 0.0
    schedule = build_schedule(config, optimizer, steps_per_epoch=25)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=hyp["label_smoothing"])
    total = 200
    for step in range(3):
        torch.nn.functional.cross_entropy(reference(images), labels, label_smoothing=hyp["label_smoothing"],
                                          reduction="sum").backward()
        for group in sgd.param_groups + muon.param_groups:  # the whitening bias decays over the whole run here
            group["lr"] = group["initial_lr"] * (1 - step / total)
        sgd.step()
        muon.step()
        reference.zero_grad(set_to_none=True)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(product(images), labels).backward()
        optimizer.step()
        schedule.step_batch()
        for name, p in product.named_parameters():
            expected = in_product_units(name, ref_state)
            assert torch.allclose(p, expected, rtol=1e-3, atol=1e-4), (step, name, (p - expected).abs().max())


def test_the_interleaved_projection_counts_each_recipes_published_schedule() -> None:
    """tools/interleaved_step_costs.py projects a whole run from per-image costs: the images each recipe trains
    with the whitening bias learning and frozen are its own schedule's (the fast recipe: 3 of 8 epochs of
    48 batches of 1024, the other 5 of 33; airbench94: 144 of ceil(9.9 x 48) = 476 steps of 1024;
    airbench94_muon: 75 of 200 steps of 2000), and a round's costs give each recipe's seconds."""
    import interleaved_step_costs as costs

    # from epoch 4 on, the hardest 68%: 33 batches of 1024 where 48 were
    assert costs.fast_images() == {"learning": 3 * 48 * 1024, "frozen": 5 * 33 * 1024}
    hardest = TrainConfig(recipe="fast", hard_fraction=0.6, hard_from_epoch=3)  # 29 batches from epoch 3
    assert costs.fast_images(hardest) == {"learning": (2 * 48 + 29) * 1024, "frozen": 5 * 29 * 1024}
    assert costs.reference_images(airbench94.HYP) == {"learning": 144 * 1024, "frozen": 332 * 1024}
    assert costs.reference_images(airbench94_muon.HYP) == {"learning": 75 * 2000, "frozen": 125 * 2000}
    recipes = [costs.Recipe("fast", lambda learning: 0, {"learning": 300, "frozen": 500}, 0.0),
               costs.Recipe("airbench94", lambda learning: 0, {"learning": 100, "frozen": 900}, 0.5)]
    rounds = [{"fast": {"learning": [0.1, 100], "frozen": [0.1, 100]},
               "airbench94": {"learning": [0.2, 100], "frozen": [0.2, 200]}},
              {"fast": {"learning": [0.3, 100], "frozen": [0.1, 100]},
               "airbench94": {"learning": [0.4, 100], "frozen": [0.0, 200]}}]  # seconds, images per pass
    cost = costs.costs(rounds)  # all passes' seconds over their images
    assert cost["fast"] == pytest.approx({"learning": 0.002, "frozen": 0.001})
    assert cost["airbench94"] == pytest.approx({"learning": 0.003, "frozen": 0.0005})
    projection = costs.project(recipes, cost)
    assert projection == pytest.approx({"fast": 1.1, "airbench94": 0.3 + 0.45 + 0.5})
    assert costs.ratio(projection) == pytest.approx(1.1 / 1.25)


def test_the_interleaved_passes_take_turns_in_a_rotated_order() -> None:
    """Every round gives each recipe an untimed step, then a pass with the whitening bias learning and one frozen
    (which first alternating), the first recipe of the round moving on each round; each timed pass's seconds
    and images are kept."""
    import interleaved_step_costs as costs

    calls = []

    def recipe(name: str) -> costs.Recipe:
        def run_pass(learning: bool, settle: bool) -> int:
            calls.append((name, "settle" if settle else learning))
            return 100
        return costs.Recipe(name, run_pass, {"learning": 1, "frozen": 1}, 0.0)

    rows = costs.measure([recipe("a"), recipe("b"), recipe("c")], rounds=2)
    assert calls[:6] == [("a", True), ("a", False), ("b", True), ("b", False), ("c", True), ("c", False)]  # warm-up
    turns = calls[6:]
    assert [name for name, _ in turns] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["b"] * 3 + ["c"] * 3 + ["a"] * 3
    assert [what for _, what in turns] == ["settle", True, False] * 3 + ["settle", False, True] * 3
    assert len(rows) == 2 and all(0 < row[n][p][0] < 1 and row[n][p][1] == 100
                                  for row in rows for n in "abc" for p in costs.PHASES)


def test_the_interleaved_costs_refuse_a_folder_without_train_and_test_in_one_line(tmp_path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "interleaved_step_costs.py"), "--data-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "train" in done.stderr
