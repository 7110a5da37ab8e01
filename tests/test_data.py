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
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "official-relabel"  # written by the official script


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


# ---- the loader for data on disk ----

def _jpegs(folder, sizes, modes=None):
    "JPEG files of the given (width, height) sizes and PIL colour modes; their paths."
    import numpy as np
    from PIL import Image
    rng, paths = np.random.default_rng(0), []
    for i, (width, height) in enumerate(sizes):
        picture = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        paths.append(Path(folder) / f"{i:03d}.JPEG")
        picture.convert((modes or {}).get(i, "RGB")).save(paths[-1], quality=90)
    return paths


def test_the_loader_yields_the_serial_tensors_in_the_same_order(tmp_path):
    from sre2l.data import ImageSet, FileLoader
    sizes = [(500, 375), (375, 500), (640, 427), (180, 120), (1024, 768)] * 8
    paths = _jpegs(tmp_path, sizes, {3: "L", 17: "CMYK", 22: "L"})
    files = ImageSet(torch.arange(len(paths)) % 4, list("abcd"), None, paths, resolution=64, resize=73)
    loader = FileLoader(files, 7, workers=2)
    for seed in (0, 1):  # one loader, two orders: its worker processes serve both passes
        order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed))
        batches = list(loader(order))
        assert [len(x) for x, _ in batches] == [7] * 5 + [5]
        assert torch.equal(torch.cat([x for x, _ in batches]), files.batch(order))
        assert torch.equal(torch.cat([y for _, y in batches]), files.labels[order])
    assert sum(1 for _ in FileLoader(files, 7, workers=2, drop_last=True)()) == 5
    assert torch.equal(files.in_memory(workers=2).images, files.batch(range(len(paths))))
    assert torch.equal(files.in_memory(workers=0).images, files.batch(range(len(paths))))
    state = torch.get_rng_state()  # decoding leaves the global RNG alone: a seeded stage's student and batches do not
    list(loader(order)); files.in_memory(workers=0)  # depend on whether its images came from files
    assert torch.equal(torch.get_rng_state(), state)


def test_a_split_is_cached_only_when_it_fits(tmp_path):
    from sre2l.data import ImageSet, cached
    paths = _jpegs(tmp_path, [(100, 80)] * 6)
    files = ImageSet(torch.zeros(6, dtype=torch.long), ["a"], None, paths, resolution=32)
    assert cached(files, budget=6 * 3 * 32 * 32, workers=0).images.shape == (6, 3, 32, 32)
    assert cached(files, budget=6 * 3 * 32 * 32 - 1, workers=0) is files  # one byte short: streamed instead


@pytest.mark.parametrize("content", [b"", b"not a picture", "truncated"])
def test_a_bad_file_is_named_through_the_worker_processes(tmp_path, content):
    from sre2l.data import ImageSet, FileLoader
    paths = _jpegs(tmp_path, [(120, 90)] * 10)
    paths[6].write_bytes(content if isinstance(content, bytes) else paths[6].read_bytes()[:300])
    files = ImageSet(torch.zeros(10, dtype=torch.long), ["a"], None, paths, resolution=32)
    with pytest.raises(DataError) as error:
        list(FileLoader(files, 4, workers=2)())
    assert str(paths[6]) in str(error.value) and "Traceback" not in str(error.value)
    assert len(str(error.value).splitlines()) == 1


def test_a_worker_process_that_dies_is_one_clear_error(tmp_path, monkeypatch):
    import os, signal
    import sre2l.data
    from sre2l.data import ImageSet, FileLoader
    paths = _jpegs(tmp_path, [(120, 90)] * 8)
    plain = sre2l.data.read_image
    def dying(path, *args, **kwargs):  # the worker that reaches this file is killed, as by the OOM killer
        if Path(path) == paths[5]: os.kill(os.getpid(), signal.SIGKILL)
        return plain(path, *args, **kwargs)
    monkeypatch.setattr(sre2l.data, "read_image", dying)  # the forked workers inherit it
    files = ImageSet(torch.zeros(8, dtype=torch.long), ["a"], None, paths, resolution=32)
    with pytest.raises(DataError, match="a process decoding images died"):
        list(FileLoader(files, 2, workers=2)())


def test_folder_mistakes_are_named_before_decoding(tmp_path):
    for split, classes in (("train", "abc"), ("val", "abd")):
        for c in classes: _jpegs(tmp_path / split / c, [(40, 30)]) if (tmp_path / split / c).mkdir(parents=True) is None else None
    with pytest.raises(DataError, match=r"different class folders .*in one only: c, d"):
        load_split("imagenet-shape", "train", root=str(tmp_path), num_classes=3)
    (tmp_path / "val" / "d").rename(tmp_path / "val" / "c")
    for f in (tmp_path / "train" / "b").iterdir(): f.unlink()
    with pytest.raises(DataError, match=r"class folder .*train/b holds no images"):
        load_split("imagenet-shape", "train", root=str(tmp_path), num_classes=3)


def test_a_distilled_image_of_another_size_is_named(tmp_path):
    for c in range(2):
        for i in range(2): write_image(distilled_path(tmp_path, c, i, "png"), torch.zeros(1, 8, 8, dtype=torch.uint8))
    write_image(distilled_path(tmp_path, 1, 1, "png"), torch.zeros(1, 8, 9, dtype=torch.uint8))
    with pytest.raises(DataError, match=r"class001_id001.png is 9x8 pixels, but the other images of its set are 8x8"):
        read_distilled(tmp_path, channels=1)


def test_make_imagefolder_command(tmp_path):
    import json
    from conftest import run, tool
    from PIL import Image
    target = tmp_path / "shape"
    result = run([tool("sre2l"), "make-imagefolder", target, "--classes", "3", "--train-per-class", "30",
                  "--val-per-class", "4", "--workers", "2"])
    assert result.returncode == 0, result.stderr
    record = json.loads((target / "dataset.json").read_text())
    train = sorted((target / "train").rglob("*.JPEG"))
    assert len(train) == 90 and len(list((target / "val").rglob("*.JPEG"))) == 12
    assert [p.parent.name for p in train[::30]] == record["wnids"] and train[0].name == f"{record['wnids'][0]}_0.JPEG"
    modes = {Image.open(p).mode for p in train}
    assert {"RGB", "L", "CMYK"} <= modes  # ImageNet has greyscale and CMYK files too
    assert run([tool("sre2l"), "make-imagefolder", target, "--classes", "3", "--train-per-class", "30",
                "--val-per-class", "4"]).returncode == 0  # the same settings: kept
    result = run([tool("sre2l"), "make-imagefolder", target, "--classes", "4"])
    assert result.returncode == 2 and "made with other settings" in result.stderr
    split = load_split("imagenet-shape", "test", root=str(target), num_classes=3)
    assert split.batch([0, 11]).shape == (2, 3, 224, 224)
