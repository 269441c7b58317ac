"""The training engine as a library: learning, early stopping, callbacks, resume, non-finite loss."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_mlflow import NonFiniteLossError, TrainConfig, prepare
from cifar_mlflow.core.checkpoint import load_checkpoint
from cifar_mlflow.core.fit import _build_loop, fit
from cifar_mlflow.train.run import train


class RecordingLogger:
    """A RunLogger that keeps what it is given, to check what a tracker would receive."""

    def __init__(self) -> None:
        self.run_id = "local-test-run"
        self.params, self.tags, self.datasets = {}, {}, []
        self.epochs: list[tuple[int, dict]] = []
        self.metrics: dict[str, float] = {}
        self.artifacts: dict[str, object] = {}
        self.model = None
        self.status = None

    def start(self, *, params, tags, datasets) -> None:
        self.params, self.tags, self.datasets = params, tags, datasets

    def log_epoch(self, epoch, metrics) -> None:
        self.epochs.append((epoch, dict(metrics)))

    def log_epoch_image(self, epoch, key, image) -> None:
        self.artifacts[f"{key}@{epoch}"] = image

    def log_metrics(self, metrics) -> None:
        self.metrics.update(metrics)

    def log_figure(self, figure, path) -> None:
        self.artifacts[path] = figure

    def log_text(self, text, path) -> None:
        self.artifacts[path] = text

    def log_file(self, local_path, artifact_dir) -> None:
        self.artifacts[f"{artifact_dir}/{Path(local_path).name}"] = local_path

    def log_model(self, model, input_example, registered_name, description) -> None:
        self.model = (model, input_example)
        self.description = description

    def end(self, status) -> None:
        self.status = status


def quick(imagefolder: Path, **changes) -> TrainConfig:
    base = dict(arch="cnn_small", dataset="imagefolder", data_dir=str(imagefolder), epochs=3, batch_size=16,
                lr=0.05, progress=False, device="cpu")
    return TrainConfig(**{**base, **changes})


def test_train_learns_and_reports_everything(imagefolder) -> None:
    logger = RecordingLogger()
    result = train(quick(imagefolder), logger=logger)
    assert [e for e, _ in logger.epochs] == [1, 2, 3]
    assert set(logger.epochs[0][1]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds",
                                        "train_images_per_second"}
    assert result.test.acc > 0.8  # three colour-coded classes are easy
    assert logger.metrics["test_acc"] == result.test.acc
    assert {"test_acc_cat", "test_acc_dog", "test_acc_ship", "test_f1_macro", "best_epoch"} <= set(logger.metrics)
    assert {"plots/learning_curves.png", "plots/confusion_matrix.png", "plots/per_class_accuracy.png",
            "plots/misclassified.png", "reports/confusion_matrix.csv", "reports/classification_report.json",
            "reports/classification_report.txt", "config.yaml"} <= set(logger.artifacts)
    assert logger.artifacts["reports/confusion_matrix.csv"].startswith("true\\predicted,cat,dog,ship")
    assert logger.params["num_parameters"] > 0 and logger.params["train_size"] + logger.params["val_size"] == 72
    assert logger.params["optimizer"] == "adamw" and logger.tags["arch"] == "cnn_small"
    model, example = logger.model
    assert example.dtype == np.uint8 and example.shape == (4, 32, 32, 3)  # images as PIL reads them
    probs = model(torch.as_tensor(example)).softmax(1)  # scaling and normalisation are built in
    assert probs.shape == (4, 3)
    assert logger.description["classes"] == ["cat", "dog", "ship"] and logger.description["image_size"] == [32, 32]
    assert (probs.argmax(1) == result.test.labels[:4]).float().mean() >= 0.75


def test_validation_and_test_loss_leave_label_smoothing_out(imagefolder) -> None:
    # Heavy smoothing raises the training criterion far above the plain cross-entropy; the losses a
    # user compares across runs (and the tuner's val_loss objective) must not move with it.
    logger = RecordingLogger()
    result = train(quick(imagefolder, epochs=1, label_smoothing=0.5), logger=logger)
    logits, labels = result.test.logits, result.test.labels
    plain = torch.nn.functional.cross_entropy(logits, labels).item()
    smoothed = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.5).item()
    assert abs(smoothed - plain) > 0.05
    assert logger.metrics["test_loss"] == pytest.approx(plain, rel=1e-5)


def test_callbacks_see_every_epoch_and_can_stop_the_run(imagefolder) -> None:
    seen = []

    def stop_after_two(epoch, metrics):
        seen.append((epoch, metrics["val_acc"]))
        if epoch == 2:
            raise RuntimeError("pruned")

    with pytest.raises(RuntimeError, match="pruned"):
        train(quick(imagefolder, epochs=5), callbacks=[stop_after_two])
    assert [e for e, _ in seen] == [1, 2]


def test_early_stopping_restores_the_best_epoch(imagefolder) -> None:
    # lr so small that nothing improves after the first epoch: patience 2 stops at epoch 3.
    config = quick(imagefolder, epochs=10, patience=2, lr=1e-9, scheduler="none",
                   arch="mlp", model_args={"batch_norm": False, "dropout": 0.0}, optimizer="sgd")
    result = train(config)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


def test_non_finite_loss_stops_at_once(imagefolder) -> None:
    config = quick(imagefolder, arch="mlp", model_args={"batch_norm": False}, lr=1e12, optimizer="sgd",
                   scheduler="none", epochs=5)
    with pytest.raises(NonFiniteLossError, match="lower --lr"):
        train(config)


@pytest.mark.parametrize("changes", [{}, {"hard_fraction": 0.5, "hard_from_epoch": 2}],
                         ids=["every-image", "hardest-images"])
def test_resumed_run_ends_where_an_uninterrupted_one_does(imagefolder, tmp_path, changes) -> None:
    # with the hardest-image selection, epoch 2 draws from the losses epoch 1 recorded: the checkpoint keeps them
    config = quick(imagefolder, epochs=3, augment="standard", **changes)
    straight = fit(prepare(config))

    class Interrupt(Exception):
        pass

    def interrupt_after_first(epoch, metrics):
        if epoch == 1:
            raise Interrupt

    ckpt = tmp_path / "last.pt"
    with pytest.raises(Interrupt):
        fit(prepare(config), callbacks=[interrupt_after_first], checkpoint_file=ckpt)
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 1
    resumed = fit(prepare(config), resume_state=state)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    assert resumed.test.acc == straight.test.acc


def test_gradient_clipping_bounds_each_step(imagefolder) -> None:
    base = dict(arch="mlp", model_args={"batch_norm": False, "dropout": 0.0}, optimizer="sgd", momentum=0.0,
                scheduler="none", lr=1.0, epochs=1, augment="none", log_model=False,
                weight_decay=0.0)  # decay is applied after clipping; keep it out
    before = prepare(quick(imagefolder, **base)).model
    start = torch.cat([p.detach().flatten() for p in before.parameters()])
    clipped = fit(prepare(quick(imagefolder, grad_clip=1e-6, **base))).model
    moved = torch.cat([p.detach().flatten() for p in clipped.parameters()]) - start
    steps = 65 // 16  # full batches in the epoch; each moves the weights by at most lr * grad_clip
    assert 0 < moved.norm() <= steps * 1e-6 * 1.01


def test_checkpoint_writer_saves_the_state_as_it_was_submitted(tmp_path) -> None:
    from cifar_mlflow.core.checkpoint import CheckpointWriter

    weights = torch.zeros(1000)
    writer = CheckpointWriter(tmp_path / "run" / "last.pt")
    writer.submit({"epoch": 1, "model": {"w": weights}, "history": [{"epoch": 1}]})
    weights += 1  # training goes on changing the tensors while the file is written
    writer.submit({"epoch": 2, "model": {"w": weights}, "history": [{"epoch": 1}, {"epoch": 2}]})
    weights += 1
    writer.close()
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert saved["epoch"] == 2 and torch.equal(saved["model"]["w"], torch.ones(1000))
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_an_epochs_metrics_are_logged_once_its_checkpoint_is_on_disk(imagefolder, tmp_path) -> None:
    """A process killed between the two then leaves an epoch the store lacks (a resume sends it), never one
    the store has and a resume would train and log again."""
    ckpt = tmp_path / "run" / "last.pt"
    on_disk_when_logged = []

    class Recording(RecordingLogger):
        def log_epoch(self, epoch, metrics) -> None:
            on_disk_when_logged.append((epoch, load_checkpoint(ckpt)["epoch"]))
            super().log_epoch(epoch, metrics)

    logger = Recording()
    fit(prepare(quick(imagefolder, epochs=3, log_model=False)), logger=logger, checkpoint_file=ckpt)
    assert on_disk_when_logged == [(1, 1), (2, 2), (3, 3)]
    assert [epoch for epoch, _ in logger.epochs] == [1, 2, 3]


def test_an_error_in_what_follows_a_checkpoint_reaches_the_training_thread(tmp_path) -> None:
    from cifar_mlflow.core.checkpoint import CheckpointWriter

    writer = CheckpointWriter(tmp_path / "last.pt")

    def refuse():
        raise RuntimeError("the store refused the metrics")

    writer.submit({"epoch": 1, "model": {}, "history": []}, then=refuse)
    with pytest.raises(RuntimeError, match="refused the metrics"):
        writer.close()
    assert writer.saved_epoch == 1  # the file itself was written


def test_a_ctrl_c_is_not_replaced_by_an_error_from_the_last_epochs_metrics(imagefolder, tmp_path, capsys) -> None:
    """The user pressed Ctrl-C while the store was refusing metrics: training stops as interrupted (the run
    ends KILLED, resumable), the store's error is said in a line, and the checkpoint is on disk."""
    ckpt = tmp_path / "run" / "last.pt"

    class Refusing(RecordingLogger):
        def log_epoch(self, epoch, metrics) -> None:
            raise RuntimeError("the store refused the metrics")

    def ctrl_c(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(prepare(quick(imagefolder, epochs=3, log_model=False)), logger=Refusing(), callbacks=[ctrl_c],
            checkpoint_file=ckpt)
    assert "training stopped; then the last epoch's checkpoint writer failed too: RuntimeError: the store " \
           "refused the metrics" in capsys.readouterr().err
    assert load_checkpoint(ckpt)["epoch"] == 1


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so_once(imagefolder, tmp_path, capsys) -> None:
    from cifar_mlflow.core.checkpoint import load_checkpoint
    from tests.conftest import small_disk

    config = TrainConfig(arch="lenet", dataset="imagefolder", data_dir=str(imagefolder), epochs=1, batch_size=16,
                         progress=False, log_model=False)
    fit(prepare(config), checkpoint_file=tmp_path / "probe" / "last.pt")
    size = (tmp_path / "probe" / "last.pt").stat().st_size
    with small_disk(tmp_path / "disk", int(size * 1.6)) as disk:  # one checkpoint fits, not two at once
        fit(prepare(dataclasses.replace(config, epochs=4)), checkpoint_file=disk / "run" / "last.pt")
        err = capsys.readouterr().err
        warnings = [line for line in err.splitlines() if line.startswith("warning: could not write the checkpoint")]
        assert len(warnings) == 1, err  # said once, not every epoch
        assert "no space left on the device" in warnings[0] and "at epoch 2" in warnings[0]
        assert "the checkpoint of epoch 1 is kept" in warnings[0]
        assert [p.name for p in (disk / "run").iterdir()] == ["last.pt"]  # no partial file left behind
        assert load_checkpoint(disk / "run" / "last.pt")["epoch"] == 1  # the previous one, intact


def test_progressive_resizing_trains_the_first_epochs_small_and_evaluates_at_full_size(imagefolder) -> None:
    prepared = prepare(quick(imagefolder, arch="airbench", epochs=3, low_res_epochs=1.5, low_res_size=28))
    seen: list[tuple[bool, int]] = []
    prepared.model.register_forward_pre_hook(lambda module, args: seen.append((module.training, args[0].shape[-1])))
    fit(prepared)
    trained = [size for training, size in seen if training]
    steps_per_epoch = len(trained) // 3
    small = math.ceil(1.5 * steps_per_epoch)  # the steps begun before 1.5 epochs were done
    assert trained == [28] * small + [32] * (len(trained) - small)
    assert {size for training, size in seen if not training} == {32}  # validation and test at full size


def test_hardest_image_epochs_train_on_that_fraction_and_the_schedule_ends_with_them(imagefolder) -> None:
    config = quick(imagefolder, arch="airbench", optimizer="muon", scheduler="linear", lr_end=0.0, warmup_epochs=0.0,
                   epochs=3, batch_size=8, hard_fraction=0.5, hard_from_epoch=2)
    prepared = prepare(config)
    trained: list[int] = []
    prepared.model.register_forward_pre_hook(
        lambda module, args: trained.append(len(args[0])) if module.training else None)
    logger = RecordingLogger()
    fit(prepared, logger=logger)
    train_size = len(prepared.data.train)
    full, half = train_size // 8 * 8, round(0.5 * train_size) // 8 * 8
    assert [row["epoch_images"] for _, row in logger.epochs] == [full, half, half]
    assert sum(trained) == full + 2 * half  # no hidden extra pass: the skipped images cost nothing

    loop = _build_loop(prepare(config))  # the schedule spans the steps taken, not 3 full epochs of steps
    steps = (full + 2 * half) // 8
    peak = loop.optimizer.param_groups[0]["lr"]
    for _ in range(steps - 1):
        loop.optimizer.step()  # no gradients: nothing moves, only the schedule is followed
        loop.schedule.step_batch()
    assert loop.optimizer.param_groups[0]["lr"] > 0.01 * peak  # still decaying before the last step
    loop.optimizer.step()
    loop.schedule.step_batch()
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
