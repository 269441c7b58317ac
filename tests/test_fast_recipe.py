"""The fast recipe: airbench's net and whitening, its schedule and fast biases, test-time augmentation,
training on the whole training set, and the logged model that includes the augmentation."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from cifar_mlflow import TrainConfig
from cifar_mlflow.config import resolve_config
from cifar_mlflow.core.fit import fit
from cifar_mlflow.core.optimizers import LINEAR_START, Lookahead, build_optimizer, build_schedule
from cifar_mlflow.core.prepare import prepare
from cifar_mlflow.data import BatchTransform, ImageData, load_image_data, split_data
from cifar_mlflow.errors import ConfigError
from cifar_mlflow.models import get_model
from cifar_mlflow.models.airbench import BIAS_LR_SCALE
from cifar_mlflow.models.inference import TestTimeAugmented
from cifar_mlflow.train.run import train
from tests.conftest import run_env


def test_whitening_layer_decorrelates_the_training_patches() -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(64, 1, 16, 16, generator=gen)
    images = torch.cat([base, 0.8 * base + 0.2 * torch.randn(64, 1, 16, 16, generator=gen),
                        torch.randn(64, 1, 16, 16, generator=gen)], dim=1)  # correlated channels
    model = get_model("airbench")
    model.init_from_data(images)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(images, model.whiten.weight[:12])  # (N, 12, 15, 15)
    flat = out.transpose(0, 1).flatten(1)
    cov = torch.cov(flat)
    assert torch.allclose(cov, torch.eye(12), atol=0.05)
    assert not model.whiten.weight.requires_grad


def test_whitening_is_fitted_on_every_class_when_the_files_come_class_by_class() -> None:
    """An image folder is read class by class: the whitening must not see the first classes alone.
    Here the first half of the classes are faint and the second half strong; fitted on the first 5,000
    images (the faint classes) the layer would amplify the whole set about 18-fold."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat_interleave(1000)  # sorted by class, as ImageFolder reads them
    amplitude = torch.where(labels < 5, 8.0, 48.0).view(-1, 1, 1, 1)
    images = (128 + amplitude * torch.randn(len(labels), 3, 16, 16, generator=gen)).clamp(0, 255).byte()
    data = ImageData(images, labels, images[::100], labels[::100], [str(i) for i in range(10)], True, "ordered")
    splits = split_data(data, val_fraction=0.0, seed=0)
    prepared = prepare(TrainConfig(arch="airbench", dataset="synthetic", device="cpu", precision="fp32"),
                       data=splits)
    normalised = BatchTransform("none", splits.mean, splits.std)(images)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(normalised, prepared.model.whiten.weight[:12].float())
    variances = torch.linalg.eigvalsh(torch.cov(out.transpose(0, 1).flatten(1)))
    assert 0.7 < variances.min() and variances.max() < 1.4  # the whole training set comes out white


def test_uncentred_whitening_whitens_the_patches_second_moment_as_published() -> None:
    """Published airbench fits its whitening on the patches' uncentred covariance: images with a mean away
    from zero come out with unit second moment (the centred fit leaves the mean's share in it)."""
    gen = torch.Generator().manual_seed(0)
    images = 1.5 + torch.randn(64, 3, 16, 16, generator=gen) * torch.tensor([1.0, 0.5, 2.0]).view(1, 3, 1, 1)

    def second_moment(model: torch.nn.Module) -> torch.Tensor:
        model.init_from_data(images)
        with torch.no_grad():
            flat = torch.nn.functional.conv2d(images, model.whiten.weight[:12]).transpose(0, 1).flatten(1)
        return flat @ flat.T / flat.shape[1]

    assert torch.allclose(second_moment(get_model("airbench", whiten_centred=False)), torch.eye(12), atol=0.05)
    assert not torch.allclose(second_moment(get_model("airbench")), torch.eye(12), atol=0.5)


def test_whitening_bias_learns_for_its_epochs_then_stays_while_the_rest_learns() -> None:
    """`whiten_bias_epochs` 1.5: the bias moves in the first epoch and the first half of the second, then not
    at all, momentum included, while the head goes on learning; once frozen, backward no longer reaches
    the whitening (the first convolution's input gradient is skipped, as airbench skips it)."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat(64)
    images = (128 + 40 * torch.randn(len(labels), 3, 16, 16, generator=gen)).clamp(0, 255).byte()
    data = ImageData(images, labels, images[:32], labels[:32], [str(i) for i in range(4)], True, "timed")
    config = TrainConfig(arch="airbench", dataset="synthetic", device="cpu", precision="fp32", epochs=3, batch_size=32,
                         lr=0.5, momentum=0.85, scheduler="none", lookahead=False, val_fraction=0.0, progress=False,
                         model_args={"widths": [8, 8, 8], "whiten_bias_epochs": 1.5})
    prepared = prepare(config, data=split_data(data, val_fraction=0.0, seed=0))
    model = prepared.model
    seen = [(model.whiten.bias.detach().clone(), model.head.weight.detach().clone())]
    needs_grad: list[bool] = []  # per training step: does the whitening's output take part in backward?
    model.whiten.register_forward_hook(
        lambda module, inputs, output: needs_grad.append(output.requires_grad) if model.training else None)
    fit(prepared, callbacks=[lambda epoch, row: seen.append((model.whiten.bias.detach().clone(),
                                                             model.head.weight.detach().clone()))])
    (bias0, _), (bias1, _), (bias2, head2), (bias3, head3) = seen
    assert not torch.equal(bias1, bias0) and not torch.equal(bias2, bias1)
    assert torch.equal(bias3, bias2)
    assert not torch.equal(head3, head2)
    steps_per_epoch = len(labels) // 32
    assert needs_grad == [True] * (steps_per_epoch * 3 // 2) + [False] * (steps_per_epoch * 3 // 2)


def test_published_final_pool_reads_a_3x3_window_and_says_which_inputs_it_suits() -> None:
    model = get_model("airbench", pool_size=3, widths=[8, 8, 8]).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="pool_size suits 32x32 inputs"):
        model(torch.randn(2, 3, 64, 64))


def test_batch_norm_biases_train_faster_and_scales_are_frozen() -> None:
    config = resolve_config(TrainConfig(recipe="fast", optimizer="sgd"))
    model = get_model("airbench")
    optimizer = build_optimizer(config, model)
    by_lr = {group["lr"]: group for group in optimizer.param_groups}
    assert set(by_lr) == {config.lr, config.lr * BIAS_LR_SCALE}
    fast = by_lr[config.lr * BIAS_LR_SCALE]["params"]
    norm_biases = [m.bias for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(p) for p in fast} == {id(p) for p in norm_biases}
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(m.weight) not in trained for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_decayed_biases_lose_as_much_per_step_as_the_weights_as_published(optimizer) -> None:
    """`decay_biases`: every bias is decayed, the 64x faster batch-norm biases at a 64th of the rate, so that
    learning rate x weight decay (what a step takes off) is the weights' for all; without it no bias decays."""
    config = resolve_config(TrainConfig(recipe="fast", optimizer=optimizer))

    def decay_per_step(model: torch.nn.Module) -> dict[str, float]:
        groups = build_optimizer(config, model).param_groups
        names = {id(p): name for name, p in model.named_parameters()}
        return {names[id(p)]: g["lr"] * g["weight_decay"] for g in groups for p in g["params"] if id(p) in names}

    published = decay_per_step(get_model("airbench", decay_biases=True))
    head = published["head.weight"]
    assert head == pytest.approx(config.lr * config.weight_decay) and head > 0
    biases = {name: value for name, value in published.items() if name.endswith("bias")}
    assert len(biases) == 7 and "whiten.bias" in biases  # six batch norms and the whitening
    assert all(value == pytest.approx(head) for value in biases.values())
    default = decay_per_step(get_model("airbench"))
    assert default["head.weight"] == head
    assert all(value == 0 for name, value in default.items() if name.endswith("bias"))


def test_whitening_bias_trains_at_the_batch_norm_biases_rate_as_airbench94_muon_does() -> None:
    """`whiten_bias_lr_scale` 64: the whitening bias joins the batch-norm biases' group (airbench94_muon's
    bias_lr for both); by default it trains at the base rate, as airbench94's does; a rate of 0 or less is
    refused with a line saying what is wrong."""
    config = resolve_config(TrainConfig(recipe="fast", optimizer="muon"))

    def lr_of_whitening_bias(model: torch.nn.Module) -> float:
        groups = build_optimizer(config, model).param_groups
        return next(g["lr"] for g in groups for p in g["params"] if p is model.whiten.bias)

    assert lr_of_whitening_bias(get_model("airbench")) == config.lr
    assert lr_of_whitening_bias(get_model("airbench", whiten_bias_lr_scale=BIAS_LR_SCALE)) == config.lr * BIAS_LR_SCALE
    with pytest.raises(ConfigError, match="whiten_bias_lr_scale must be positive"):
        get_model("airbench", whiten_bias_lr_scale=0)


@pytest.mark.parametrize("lr_end", [None, 0.0])
def test_linear_schedule_rises_from_a_fifth_then_falls_to_the_end_value(lr_end) -> None:
    """Up from 0.2x over the warm-up, then straight down to `--lr-end`: airbench94's 0.07x by default, or to
    nothing (airbench94_muon's and the fast recipe's) with 0, for Muon's rate as for SGD's."""
    ends = {} if lr_end is None else {"lr_end": lr_end}
    config = resolve_config(TrainConfig(arch="airbench", optimizer="muon", epochs=10, warmup_epochs=2, **ends))
    assert config.lr_end == (0.07 if lr_end is None else 0.0)
    assert resolve_config(TrainConfig(recipe="fast")).lr_end == 0.0
    model = get_model("airbench", widths=[8, 8, 8])
    optimizer = build_optimizer(config, model)
    schedule = build_schedule(config, optimizer, steps_per_epoch=10)
    seen, muon = [], []
    for _ in range(101):
        seen.append(optimizer.param_groups[0]["lr"] / config.lr)
        muon.append(optimizer.param_groups[-1]["lr"] / config.muon_lr)
        optimizer.step()  # no gradients: nothing moves
        schedule.step_batch()
    assert seen[0] == pytest.approx(LINEAR_START)
    assert max(seen) == pytest.approx(1.0) and seen.index(max(seen)) == 20
    assert seen[-1] == pytest.approx(config.lr_end, abs=1e-12)  # after the last of 80 falling steps
    assert seen[60] == pytest.approx((1 + config.lr_end) / 2)  # half way down
    assert muon == pytest.approx(seen)


def test_lr_end_outside_zero_to_one_is_refused_before_anything_runs() -> None:
    with pytest.raises(ConfigError, match=r"lr_end must be in \[0, 1\]"):
        resolve_config(TrainConfig(recipe="fast", lr_end=-0.1))


def test_lookahead_blends_every_fifth_step_and_ends_on_the_average() -> None:
    model = torch.nn.Linear(3, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    lookahead = Lookahead(model, total_steps=10)
    with torch.no_grad():
        model.weight.fill_(1.0)  # what training did since
    for _ in range(4):
        lookahead.step()
    assert torch.equal(model.weight, torch.ones(1, 3))
    lookahead.step()  # the 5th: decay 0.95**5 * (5/10)**3 towards the average (still 0)
    decay = 0.95 ** 5 * 0.5 ** 3
    assert torch.allclose(model.weight, torch.full((1, 3), 1 - decay))
    with torch.no_grad():
        model.weight.fill_(5.0)
    lookahead.finish()
    assert torch.allclose(model.weight, torch.full((1, 3), 1 - decay))
    assert resolve_config(TrainConfig(arch="airbench")).lookahead and not resolve_config(TrainConfig()).lookahead
    assert not resolve_config(TrainConfig(recipe="fast")).lookahead  # as airbench94_muon: none


def test_the_fast_recipe_alternates_flips_unless_told_otherwise() -> None:
    assert resolve_config(TrainConfig(recipe="fast")).flip == "alternating"
    assert resolve_config(TrainConfig(recipe="fast", flip="random")).flip == "random"
    assert resolve_config(TrainConfig(arch="cnn")).flip == "random"


def shifted(x: torch.Tensor, d: int) -> torch.Tensor:
    """The view whose pixel (i, j) is pixel (i + d, j + d) of `x`, mirrored at the border (-1 -> 1, n -> n - 2)."""
    n = x.shape[-1]
    index = torch.tensor([-k if k < 0 else 2 * (n - 1) - k if k >= n else k for k in range(d, n + d)])
    return x[..., index, :][..., index]


def test_test_time_augmentation_averages_the_views() -> None:
    """airbench's views and weights: the image and its mirror a quarter each, the 1-pixel shifts up-left
    and down-right and their mirrors an eighth each. The model sees every pixel where it is (a linear
    layer on the flattened image), so a missing view, a wrong shift or a wrong weight changes its answer."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5)).eval()
    x = torch.rand(6, 3, 8, 8)
    with torch.no_grad():
        flip = TestTimeAugmented(model, "flip")(x)
        torch.testing.assert_close(flip, (model(x) + model(x.flip(-1))) / 2)
        views = [x, x.flip(-1), shifted(x, -1), shifted(x, -1).flip(-1), shifted(x, 1), shifted(x, 1).flip(-1)]
        weights = [1 / 4, 1 / 4, 1 / 8, 1 / 8, 1 / 8, 1 / 8]
        expected = sum(w * model(v) for w, v in zip(weights, views))
        torch.testing.assert_close(TestTimeAugmented(model, "flip_translate")(x), expected)
        assert not torch.allclose(expected, flip, atol=1e-3)  # the shifts change the answer here


def test_fast_recipe_trains_on_the_whole_training_set(imagefolder) -> None:
    # At 16 images a batch the whitening bias's 64x rate (chosen for 1024) overshoots in 16 steps: 1x here,
    # which also shows a key of --model-args winning over the recipe's.
    config = TrainConfig(recipe="fast", dataset="imagefolder", data_dir=str(imagefolder), epochs=4, batch_size=16,
                         progress=False, device="cpu", model_args={"whiten_bias_lr_scale": 1})
    result = train(config)
    assert len(result.history) == 4 and "val_acc" not in result.history[0]
    assert result.best_epoch == 4  # no validation split: the last epoch's weights
    assert result.history[0]["epoch_images"] == 64  # all 72 training images, in full batches of 16
    assert result.test.acc == 1.0, result.test.acc  # 3 classes of distinct colours: any learning tells them apart


def test_logged_fast_model_includes_test_time_augmentation(mlflow_server, imagefolder, tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cifar_mlflow.train", "--recipe", "fast", "--dataset", "imagefolder", "--data-dir",
         str(imagefolder), "--epochs", "2", "--batch-size", "16", "--no-progress", "--experiment-name", "fast-test",
         "--precision", "bf16",  # trained in bf16; the final test and the logged model are fp32
         # airbench's layout at a quarter of its widths: bf16 convolutions are emulated, about 10x slower,
         # on CPUs without AVX-512 BF16 or AMX (65 of this test's 120 s at full width on such a CPU)
         "--model-args", '{"widths": [16, 32, 32]}'],
        cwd=tmp_path, env=run_env(MLFLOW_TRACKING_URI=mlflow_server), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("fast-test").experiment_id])
    assert run.info.status == "FINISHED"
    assert (run.data.params["recipe"], run.data.params["arch"], run.data.params["tta"], run.data.params["flip"]) == (
        "fast", "airbench", "flip_translate", "alternating")
    assert (run.data.params["optimizer"], run.data.params["muon_lr"]) == ("muon", "0.24")
    assert json.loads(run.data.params["model_args"]) == {  # the recipe's for its net, the key given added
        "widths": [16, 32, 32], "pool_size": 3, "whiten_centred": False, "whiten_bias_epochs": 3, "decay_biases": True,
        "whiten_bias_lr_scale": 64}
    assert run.data.params["val_size"] == "0" and "val_acc" not in run.data.metrics
    assert (run.data.tags["precision"], run.data.tags["channels_last"]) == ("bf16", "true")
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    data = load_image_data("imagefolder", str(imagefolder))
    with torch.no_grad():
        predictions = model(data.test_images.permute(0, 2, 3, 1)).argmax(1)
    accuracy = (predictions == data.test_labels).float().mean().item()
    assert accuracy == pytest.approx(run.data.metrics["test_acc"], abs=1e-6)
