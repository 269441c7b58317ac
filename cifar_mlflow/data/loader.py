"""A loader that keeps the decoded uint8 data set on the training device and yields batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cifar_mlflow.data.augment import BatchTransform
from cifar_mlflow.data.hardest import HardestImages
from cifar_mlflow.data.splits import Split

# Keep the data on a CUDA device when it takes at most this share of the free memory.
_DEVICE_MEMORY_SHARE = 0.25


def _fits_on(device: torch.device, nbytes: int) -> bool:
    if device.type != "cuda":
        return True  # CPU: it is in memory already; MPS shares it; a data set of CIFAR's size fits an XPU
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= _DEVICE_MEMORY_SHARE * free


class DeviceLoader:
    """Yields `(images, labels)` like a DataLoader: images normalised float `(B, C, H, W)` on `device`.

    Args:
        split: the uint8 images and labels.
        batch_size: images per batch.
        transform: augmentation and normalisation of each batch.
        device: where batches are produced (the data is copied there once when it fits).
        shuffle: reshuffle every epoch (training).
        seed: seeds the generator of shuffling and augmentation (and the first epoch's flips when
            the transform alternates them).
        channels_last: yield channels-last tensors (faster convolutions on CUDA).
        rank, world_size: under torchrun, this process takes every `world_size`-th item of each
            epoch's order, starting at `rank` (training: the same number on every rank).
        hardest: training on the hardest images only from some epoch on (`HardestImages`): each epoch
            draws from its pool, and the training pass gives back each batch's losses (`record_losses`);
            under torchrun the processes swap them at the end of each pass.
    """

    def __init__(self, split: Split, batch_size: int, transform: BatchTransform, device: torch.device, *,
                 shuffle: bool, seed: int = 0, channels_last: bool = False, rank: int = 0,
                 world_size: int = 1, hardest: HardestImages | None = None) -> None:
        nbytes = split.images.numel() * split.images.element_size()
        self.on_device = _fits_on(device, nbytes)
        storage = device if self.on_device else torch.device("cpu")
        self.images = split.images.to(storage)
        if not self.on_device:
            self.images = self.images.pin_memory()
        self.labels = split.labels.to(device)
        self.batch_size = batch_size
        self.transform = transform
        self.device = device
        self.shuffle = shuffle
        self.channels_last = channels_last
        self.generator = torch.Generator(device=device).manual_seed(seed)
        # Alternating flips: each image's flip in the first epoch, drawn once from the seed; an odd
        # epoch flips the others. `epoch` counts the passes begun (set it when resuming).
        self.epoch = 0
        self.first_flips = (torch.rand(len(self.labels), generator=self.generator, device=device) < 0.5
                            if shuffle and transform.alternating_flips else None)
        self.rank, self.world_size = rank, world_size
        if hardest is not None and not shuffle:
            raise ValueError("hardest-image selection is for a training loader (shuffle=True)")
        self.hardest = hardest
        self.last_indices: torch.Tensor | None = None  # the images of the batch yielded last
        # Training drops the last partial batch (stable batch-norm statistics, static shapes),
        # unless the split is smaller than one batch.
        self.drop_last = shuffle and self._local_count() >= batch_size

    def _local_count(self, pass_index: int | None = None) -> int:
        n = len(self.labels)
        if self.hardest is not None:
            n = self.hardest.pool_size(self.epoch if pass_index is None else pass_index)
        if self.shuffle:  # every rank the same number of items, so every rank takes the same steps
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def steps_in_pass(self, pass_index: int) -> int:
        """The batches pass `pass_index` (0-based) yields."""
        n = self._local_count(pass_index)
        # a pool of the hardest images smaller than a batch: one batch of it
        return max(1, n // self.batch_size) if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        """The batches of the next pass (read it before iterating: a pass under way has counted itself)."""
        return self.steps_in_pass(self.epoch)

    def record_losses(self, losses: torch.Tensor) -> None:
        """Each image's loss in the batch yielded last (for the hardest-image selection; nothing without it)."""
        if self.hardest is not None:
            self.hardest.record(self.last_indices, losses)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        steps = len(self)
        pool = self.hardest.pool(self.epoch) if self.hardest is not None else None
        n = len(self.labels) if pool is None else len(pool)
        if self.shuffle:  # the same seed on every rank: the same order, split between them
            order = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        if pool is not None:
            order = pool.index_select(0, order)
        order = order[self.rank::self.world_size][:self._local_count()]
        flips = None if self.first_flips is None else self.first_flips ^ bool(self.epoch % 2)
        self.epoch += 1
        for i in range(steps):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            # index_select: about 10x faster than indexing with a tensor for whole rows
            images = self.images.index_select(0, idx if self.on_device else idx.cpu()).to(self.device,
                                                                                         non_blocking=True)
            x = self.transform(images, self.generator, None if flips is None else flips.index_select(0, idx))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self.last_indices = idx
            yield x, self.labels.index_select(0, idx)
        if self.hardest is not None:  # every batch's losses are in (each process's, under torchrun)
            self.hardest.share()
