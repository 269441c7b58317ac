"""The hardest-image selection: which images the later epochs of `--hard-fraction` train on."""

from __future__ import annotations

import pytest
import torch

from cifar_mlflow.data import BatchTransform, DeviceLoader, Split
from cifar_mlflow.data.hardest import HardestImages


def _loader(count: int, batch: int, hardest: HardestImages) -> DeviceLoader:
    images = torch.randint(0, 256, (count, 3, 8, 8), dtype=torch.uint8)
    split = Split(images, torch.arange(count) % 10)
    return DeviceLoader(split, batch, BatchTransform("flip", (0.5,) * 3, (0.25,) * 3), torch.device("cpu"),
                        shuffle=True, seed=0, hardest=hardest)


def _one_pass(loader: DeviceLoader, losses: torch.Tensor) -> list[int]:
    """The images of one pass, in order; each batch's losses recorded as `losses` has them."""
    seen = []
    for _ in loader:
        seen += loader.last_indices.tolist()
        loader.record_losses(losses[loader.last_indices])
    return seen


def test_later_passes_draw_only_the_images_with_the_highest_last_loss() -> None:
    hardest = HardestImages(100, 0.3, from_pass=1, device=torch.device("cpu"))
    loader = _loader(100, 10, hardest)
    losses = torch.rand(100, generator=torch.Generator().manual_seed(1))
    assert len(loader) == 10
    assert sorted(_one_pass(loader, losses)) == list(range(100))  # the first pass: every image once

    assert len(loader) == 3
    second = _one_pass(loader, losses)
    assert sorted(second) == sorted(torch.topk(losses, 30).indices.tolist())

    # those trained on now have low losses, the ones left out keep theirs: the next pass takes other images
    losses[second] = 0.0
    hardest.record(torch.tensor(second), losses[second])
    third = _one_pass(loader, losses)
    assert not set(third) & set(second)
    assert sorted(third) == sorted(torch.topk(losses, 30).indices.tolist())


def test_the_losses_travel_with_a_checkpoint() -> None:
    hardest = HardestImages(50, 0.5, from_pass=1, device=torch.device("cpu"))
    hardest.record(torch.arange(50), torch.arange(50.0))
    restored = HardestImages(50, 0.5, from_pass=1, device=torch.device("cpu"))
    restored.load_state_dict(hardest.state_dict())
    assert sorted(restored.pool(1).tolist()) == list(range(25, 50))
    assert restored.pool(0) is None  # before `from_pass`: every image


def test_a_pool_smaller_than_a_batch_is_one_batch() -> None:
    loader = _loader(40, 16, HardestImages(40, 0.1, from_pass=1, device=torch.device("cpu")))
    _one_pass(loader, torch.rand(40))
    assert len(loader) == 1
    assert len(_one_pass(loader, torch.rand(40))) == 4


@pytest.mark.parametrize(("fraction", "from_pass", "message"), [(0.0, 1, "fraction"), (1.5, 1, "fraction"),
                                                                (0.5, 0, "from_pass")])
def test_bad_settings_are_refused(fraction, from_pass, message) -> None:
    with pytest.raises(ValueError, match=message):
        HardestImages(10, fraction, from_pass, torch.device("cpu"))


def _rank_of_two(rank: int, init_file: str, results: str) -> None:
    """One of two processes training on its shard of the same loader (as under torchrun)."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    hardest = HardestImages(64, 0.25, from_pass=1, device=torch.device("cpu"))
    split = Split(torch.zeros(64, 3, 4, 4, dtype=torch.uint8), torch.zeros(64, dtype=torch.int64))
    loader = DeviceLoader(split, 8, BatchTransform("none", (0.5,) * 3, (0.25,) * 3), torch.device("cpu"),
                          shuffle=True, seed=0, rank=rank, world_size=2, hardest=hardest)
    losses = torch.arange(64.0)  # the same true losses; each process only sees its own images' losses
    mine = _one_pass(loader, losses)
    second = _one_pass(loader, losses)
    torch.save({"mine": mine, "second": second, "losses": hardest.losses}, f"{results}{rank}.pt")
    torch.distributed.destroy_process_group()


def test_under_torchrun_the_processes_rank_all_losses_and_split_one_pool(tmp_path) -> None:
    torch.multiprocessing.spawn(_rank_of_two, args=(str(tmp_path / "init"), str(tmp_path / "rank")), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert sorted(ranks[0]["mine"] + ranks[1]["mine"]) == list(range(64))  # the first pass: shards of all images
    # each process knows every image's loss, and both drew from the same pool: the 16 hardest, 8 each
    assert torch.equal(ranks[0]["losses"], torch.arange(64.0)) and torch.equal(ranks[1]["losses"], torch.arange(64.0))
    assert sorted(ranks[0]["second"] + ranks[1]["second"]) == list(range(48, 64))
