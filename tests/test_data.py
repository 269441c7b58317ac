"""Data sets through torchvision's real loaders and file formats, splits and statistics."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from cifar_mlflow.data import Split, load_image_data, split_data
from cifar_mlflow.data.splits import init_sample
from cifar_mlflow.errors import ConfigError
from tests.conftest import CLASSES, write_cifar10, write_imagefolder, write_mnist


def point_md5s_at_generated_files(monkeypatch, cls, folder) -> None:
    """torchvision checks the MD5 of the real files; point its list at the generated ones."""
    def md5(name: str) -> str:
        return hashlib.md5((folder / name).read_bytes()).hexdigest()
    if hasattr(cls, "train_list"):
        monkeypatch.setattr(cls, "train_list", [[n, md5(n)] for n, _ in cls.train_list])
        monkeypatch.setattr(cls, "test_list", [[n, md5(n)] for n, _ in cls.test_list])
        monkeypatch.setitem(cls.meta, "md5", md5(cls.meta["filename"]))
    else:  # SVHN: split -> [url, filename, md5]
        monkeypatch.setattr(cls, "split_list", {k: [u, f, md5(f) if (folder / f).exists() else m]
                                                for k, (u, f, m) in cls.split_list.items()})


def test_cifar10_pickled_batches(tmp_path, monkeypatch) -> None:
    write_cifar10(tmp_path)
    point_md5s_at_generated_files(monkeypatch, torchvision.datasets.CIFAR10, tmp_path / "cifar-10-batches-py")
    data = load_image_data("cifar10", str(tmp_path))
    assert data.train_images.shape == (250, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (40, 3, 32, 32)
    assert data.classes[3] == "cat" and data.hflip_ok
    # The pixel layout survives: each image's colour is its class's colour (red-ish for class 0).
    first_zero = int((data.train_labels == 0).nonzero()[0])
    assert data.train_images[first_zero, 0].float().mean() > data.train_images[first_zero, 1].float().mean() + 100


def test_cifar100_pickled_files(tmp_path, monkeypatch) -> None:
    import pickle

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 30), ("test", 10)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({"data": data, "fine_labels": rng.integers(0, 100, n).tolist()}))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    point_md5s_at_generated_files(monkeypatch, torchvision.datasets.CIFAR100, folder)
    data = load_image_data("cifar100", str(tmp_path))
    assert data.train_images.shape == (30, 3, 32, 32) and len(data.classes) == 100 and data.hflip_ok


def test_svhn_mat_files(tmp_path, monkeypatch) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 8)):
        images = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # SVHN's (H, W, C, N) layout
        labels = rng.integers(1, 11, (n, 1))  # 10 stands for the digit 0
        savemat(tmp_path / f"{split}_32x32.mat", {"X": images, "y": labels})
    point_md5s_at_generated_files(monkeypatch, torchvision.datasets.SVHN, tmp_path)
    data = load_image_data("svhn", str(tmp_path))
    assert data.train_images.shape == (20, 3, 32, 32) and data.test_images.shape == (8, 3, 32, 32)
    assert data.train_labels.min() >= 0 and data.train_labels.max() <= 9  # torchvision maps 10 -> 0
    assert data.classes == [str(i) for i in range(10)] and not data.hflip_ok


def test_mnist_idx_files(tmp_path) -> None:
    write_mnist(tmp_path)
    data = load_image_data("mnist", str(tmp_path))
    assert data.train_images.shape == (60, 1, 28, 28)
    assert data.test_images.shape == (20, 1, 28, 28)
    assert not data.hflip_ok  # mirrored digits are other digits
    resized = load_image_data("mnist", str(tmp_path), image_size=32)
    assert resized.train_images.shape == (60, 1, 32, 32)


def test_fashion_mnist_idx_files(tmp_path) -> None:
    write_mnist(tmp_path, folder="FashionMNIST")
    data = load_image_data("fashion_mnist", str(tmp_path))
    assert data.train_images.shape == (60, 1, 28, 28)
    assert data.classes[0] == "T-shirt/top" and data.hflip_ok  # a mirrored shirt is still a shirt


def test_imagefolder(imagefolder) -> None:
    data = load_image_data("imagefolder", str(imagefolder))
    assert data.classes == sorted(CLASSES)
    assert data.train_images.shape == (72, 3, 32, 32)
    assert torch.bincount(data.test_labels).tolist() == [9, 9, 9]


def test_imagefolder_mixed_sizes_need_image_size(tmp_path) -> None:
    write_imagefolder(tmp_path, n_train=2, n_test=1, size=32)
    write_imagefolder(tmp_path / "more", n_train=1, n_test=1, size=40, fmt="jpg")
    (tmp_path / "more" / "train" / "cat" / "0000.jpg").rename(tmp_path / "train" / "cat" / "big.jpg")
    with pytest.raises(ConfigError, match="--image-size"):
        load_image_data("imagefolder", str(tmp_path))
    data = load_image_data("imagefolder", str(tmp_path), image_size=24)
    assert data.train_images.shape[1:] == (3, 24, 24)


def test_missing_imagefolder_says_what_is_expected(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"train/<class>/<image>"):
        load_image_data("imagefolder", str(tmp_path / "nothing"))


def test_offline_download_failure_says_where_to_put_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"cifar-10-python\.tar\.gz .* in " + str(tmp_path)):
        load_image_data("cifar10", str(tmp_path))


def test_stratified_seeded_split(imagefolder) -> None:
    data = load_image_data("imagefolder", str(imagefolder))
    a = split_data(data, val_fraction=1 / 3, seed=1)
    b = split_data(data, val_fraction=1 / 3, seed=1)
    c = split_data(data, val_fraction=1 / 3, seed=2)
    assert len(a.train) == 48 and len(a.val) == 24 and len(a.test) == 27
    assert torch.bincount(a.val.labels).tolist() == [8, 8, 8]  # stratified
    assert torch.equal(a.val.images, b.val.images)  # seeded
    assert not torch.equal(a.val.images, c.val.images)
    # No image is in both train and validation.
    train_rows = {t.numpy().tobytes() for t in a.train.images}
    assert not any(v.numpy().tobytes() in train_rows for v in a.val.images)


def test_caps_and_statistics() -> None:
    data = load_image_data("synthetic", "unused", seed=0)
    splits = split_data(data, val_fraction=0.1, seed=0, max_train_samples=1000, max_eval_samples=300)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1000, 300, 300)
    counts = torch.bincount(splits.train.labels, minlength=10)
    assert counts.min() >= 90  # stratified cap keeps classes balanced
    pixels = splits.train.images.double() / 255
    assert np.allclose(splits.mean, pixels.mean(dim=(0, 2, 3)).numpy(), atol=1e-3)
    assert np.allclose(splits.std, pixels.std(dim=(0, 2, 3)).numpy(), atol=1e-3)
    assert splits.digest == split_data(data, val_fraction=0.2, seed=3).digest  # digest of the data set itself


def test_a_class_missing_from_a_split_is_refused() -> None:
    from cifar_mlflow.data.sources import ImageData

    images = torch.zeros(40, 3, 8, 8, dtype=torch.uint8)
    train_labels = torch.arange(40) % 2  # classes 0 and 1 only: "ship" has no training image
    data = ImageData(images, train_labels, images, torch.arange(40) % 3, list(CLASSES), True, "test")
    with pytest.raises(ConfigError, match="class ship has no images in the training split"):
        split_data(data, val_fraction=0.0, seed=0)
    data.train_labels = torch.arange(40) % 3
    data.test_labels = torch.arange(40) % 2  # and none in the test split
    with pytest.raises(ConfigError, match="class ship has no images in the test split"):
        split_data(data, val_fraction=0.0, seed=0)
    data.test_labels = torch.arange(40) % 3
    assert split_data(data, val_fraction=0.25, seed=0).num_classes == 3


def test_a_capped_synthetic_run_builds_only_what_it_uses() -> None:
    from cifar_mlflow.config import TrainConfig, resolve_config
    from cifar_mlflow.core.prepare import load_splits, synthetic_size

    config = resolve_config(TrainConfig(dataset="synthetic", arch="cnn_small", max_train_samples=64,
                                        max_eval_samples=32))
    assert synthetic_size(config) == (73, 32)  # 64 training images + a tenth held out, 32 test images
    data = load_splits(config)
    assert len(data.train) == 64 and len(data.test) == 32 and data.train.images.dtype == torch.uint8
    assert synthetic_size(resolve_config(TrainConfig(dataset="synthetic", arch="cnn_small"))) == (50_000, 10_000)


def test_the_initialisation_sample_mixes_classes_read_in_order() -> None:
    labels = torch.arange(10).repeat_interleave(600)  # class by class, as an image folder is read
    index = torch.arange(len(labels)) % 256
    images = torch.stack([labels, index], 1).view(-1, 2, 1, 1).to(torch.uint8)  # its label and where it was
    sample = init_sample(Split(images, labels), 500, seed=3)
    assert torch.bincount(sample[:, 0, 0, 0].long(), minlength=10).tolist() == [50] * 10
    assert torch.equal(sample, init_sample(Split(images, labels), 500, seed=3))  # seeded
    assert not torch.equal(sample, init_sample(Split(images, labels), 500, seed=4))


def test_a_second_run_on_the_same_folder_reads_the_decoded_copy(tmp_path, monkeypatch, capsys) -> None:
    from cifar_mlflow.data import sources

    monkeypatch.setenv("CIFAR_MLFLOW_CACHE_DIR", str(tmp_path / "cache"))
    root = write_imagefolder(tmp_path / "folder")
    first = load_image_data("imagefolder", str(root))
    assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(sources, "_decode_files", no_decoding)
    second = load_image_data("imagefolder", str(root))
    assert torch.equal(first.train_images, second.train_images) and torch.equal(first.test_labels, second.test_labels)
    assert second.classes == first.classes and second.source == first.source
    monkeypatch.undo()

    # An edited image is a different folder: decoded again, the edit seen.
    monkeypatch.setenv("CIFAR_MLFLOW_CACHE_DIR", str(tmp_path / "cache"))
    edited = sorted((root / "train" / CLASSES[0]).iterdir())[0]
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(edited)
    third = load_image_data("imagefolder", str(root))
    assert int(third.train_images[0].sum()) == 0 and not torch.equal(third.train_images, first.train_images)
    assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) == 2
    # Other resized copies are other entries.
    assert load_image_data("imagefolder", str(root), image_size=16).train_images.shape[-1] == 16


def test_the_folder_cache_off_damaged_or_unwritable(tmp_path, monkeypatch, capsys) -> None:
    root = write_imagefolder(tmp_path / "folder")
    monkeypatch.setenv("CIFAR_MLFLOW_CACHE_DIR", "off")
    load_image_data("imagefolder", str(root))
    assert not list(tmp_path.rglob("imagefolder-*.pt"))

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CIFAR_MLFLOW_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    data = load_image_data("imagefolder", str(root))
    assert len(data.train_labels) == 3 * 24
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and "decodes them again" in note[0] and "CIFAR_MLFLOW_CACHE_DIR" in note[0]

    monkeypatch.setenv("CIFAR_MLFLOW_CACHE_DIR", str(tmp_path / "cache"))
    good = load_image_data("imagefolder", str(root))
    (entry,) = (tmp_path / "cache").glob("imagefolder-*.pt")
    entry.write_bytes(b"half a file")
    again = load_image_data("imagefolder", str(root))
    assert torch.equal(again.train_images, good.train_images)
    assert "cannot be read" in capsys.readouterr().err
    assert torch.equal(torch.load(entry, weights_only=True)["train_images"], good.train_images)  # replaced, whole
