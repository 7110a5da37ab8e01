"""Data sets: Fashion-MNIST from the Debian package, IDX errors, the official distilled layout."""
import gzip
import os
from pathlib import Path

import pytest
import torch

from sre2l.core import Sre2lError
from sre2l.data import (DataError, load_split, read_idx, read_distilled, distilled_path, write_image, ipc_subset,
                        get_dataset)

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "official-relabel"


def test_fashion_mnist_loads_from_the_debian_package():
    if not (DEBIAN / "train-images-idx3-ubyte.gz").is_file():
        if os.environ.get("CI"): pytest.fail("CI must install dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)")
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    train, test = load_split("fashion-mnist", "train"), load_split("fashion-mnist", "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    spec = get_dataset("fashion-mnist")
    assert abs(train.images.float().div(255).mean().item() - spec.mean[0]) < 1e-3
    assert abs(train.images.float().div(255).std().item() - spec.std[0]) < 1e-3


def test_fashion_mnist_missing_names_every_place(tmp_path):
    with pytest.raises(DataError) as error:
        load_split("fashion-mnist", "train", root=str(tmp_path))
    assert str(tmp_path) in str(error.value) and "dataset-fashion-mnist" in str(error.value)


def test_truncated_idx_file_is_refused(tmp_path):
    good = bytes([0, 0, 8, 3]) + (4).to_bytes(4, "big") + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + bytes(16)
    (tmp_path / "ok.gz").write_bytes(gzip.compress(good))
    assert read_idx(tmp_path / "ok.gz").shape == (4, 2, 2)
    (tmp_path / "short").write_bytes(good[:-3])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "text").write_bytes(b"hello world!")
    with pytest.raises(DataError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "text")


def test_reads_the_official_image_fixture():
    if not FIXTURE.is_dir(): pytest.skip("shared/fixtures is not beside the checkout")
    images = read_distilled(FIXTURE / "images", ipc=10, num_classes=10)
    assert images.images.shape == (100, 3, 224, 224) and images.labels.tolist() == sum([[c] * 10 for c in range(10)], [])


def test_class_numbers_come_from_names_not_sorted_folders(tmp_path):
    # with 1001 classes, 'new1000' sorts between 'new100' and 'new101': the label must still be 1000
    for cls in range(1001):
        write_image(distilled_path(tmp_path, cls, 0, "png"), torch.full((1, 2, 2), cls % 251, dtype=torch.uint8))
    images = read_distilled(tmp_path, ipc=1, channels=1)
    assert images.labels.tolist() == list(range(1001))
    assert [int(images.images[c, 0, 0, 0]) for c in (100, 101, 1000)] == [100, 101, 1000 % 251]
    distilled_path(tmp_path, 500, 0, "png").unlink()
    with pytest.raises(DataError, match=r"no images for classes \[500\]"):
        read_distilled(tmp_path, channels=1, num_classes=1001)


def test_ipc_larger_than_a_class_is_refused(tmp_path):
    pixel = torch.zeros(1, 4, 4, dtype=torch.uint8)
    for cls, count in ((0, 3), (1, 2)):
        for i in range(count): write_image(distilled_path(tmp_path, cls, i, "png"), pixel)
    with pytest.raises(DataError, match="ipc=3 asked for, but class 1 .* has only 2 images"):
        read_distilled(tmp_path, ipc=3, channels=1)
    assert len(read_distilled(tmp_path, ipc=2, channels=1)) == 4
