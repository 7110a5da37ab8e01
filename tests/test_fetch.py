"""`sre2l fetch`: released sets from local copies of their archives (nothing can be downloaded in CI)."""
import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import run, tool
from sre2l.core import Sre2lError
from sre2l.runs import sha256_file, read_manifest
from sre2l.data import DATASETS, DatasetSpec, IMAGENET_MEAN, IMAGENET_STD, register_dataset
from sre2l.fetch import ARTIFACTS, Artifact, fetch, register_artifact

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "official-relabel"  # written by the official script

if "official-fixture" not in DATASETS:
    register_dataset(DatasetSpec("official-fixture", 10, 224, 3, IMAGENET_MEAN, IMAGENET_STD, None, "tests/fixtures"))
SETTINGS = ("data.name=official-fixture", "recover.ipc=10", "relabel.epochs=2", "relabel.batch_size=32", "relabel.order=official")


@pytest.fixture
def released(tmp_path):
    "The official fixture as the Hub serves a release: a zip of the images and a tar.gz of the labels, registered."
    shutil.make_archive(tmp_path / "fixture_images", "zip", FIXTURE, "images")
    with tarfile.open(tmp_path / "fixture_labels.tar.gz", "w:gz") as archive: archive.add(FIXTURE / "labels", "FKD_cutmix_fp16")
    for artifact in (Artifact("t_images", "fixture_images.zip", "images", "sre2l_in1k", SETTINGS),
                     Artifact("t_labels", "fixture_labels.tar.gz", "labels", "sre2l_in1k", SETTINGS)):
        ARTIFACTS.pop(artifact.name, None); register_artifact(artifact)
    yield tmp_path
    for name in ("t_images", "t_labels"): ARTIFACTS.pop(name, None)


def _fetch(root, name, run_dir="run", **kwargs):
    file = root / ARTIFACTS[name].filename
    kwargs.setdefault("sha256", sha256_file(file))
    return fetch(name, root / run_dir if run_dir else None, source=file, data_dir=root / "published", **kwargs)


def test_images_then_labels_become_a_run(released):
    record = _fetch(released, "t_images")
    assert record["imported"] == 100 and read_manifest(released / "run" / "recover")["images"] == 100
    beside = released / "published" / "t_images" / record["sha256"][:16]
    assert json.loads((beside / "fetch.json").read_text())["sha256"] == record["sha256"] and (beside / "files").is_dir()
    record = _fetch(released, "t_labels", trust_pickle=True)
    assert record["imported"] == 8 and read_manifest(released / "run" / "relabel")["stored_batches"] == 8


def test_checksum_mismatch_stops_before_unpacking(released):
    with pytest.raises(Sre2lError, match="sha256 of .* is [0-9a-f]{64}, expected 0{64}"):
        _fetch(released, "t_images", sha256="0" * 64)
    assert not (released / "published").exists() and not (released / "run").exists()
    with pytest.raises(Sre2lError, match="no checksum is known for t_images"):
        _fetch(released, "t_images", sha256="")


def test_labels_need_trust_and_their_images_first(released):
    with pytest.raises(Sre2lError, match="--trust-pickle"):
        _fetch(released, "t_labels")
    with pytest.raises(Sre2lError, match="has no images for these labels; fetch t_images into the same --run-dir first"):
        _fetch(released, "t_labels", trust_pickle=True)


@pytest.mark.parametrize("member", ["../escape.txt", "/etc/escape.txt", "set/../../escape.txt"])
def test_archive_members_outside_the_target_are_refused(tmp_path, member):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr("set/new000/class000_id000.png", b"x"); archive.writestr(member, b"owned")
    ARTIFACTS.pop("t_evil", None); register_artifact(Artifact("t_evil", "evil.zip", "images", "digits"))
    try:
        with pytest.raises(Sre2lError, match="would land outside the target folder"):
            fetch("t_evil", None, source=tmp_path / "evil.zip", sha256=sha256_file(tmp_path / "evil.zip"), data_dir=tmp_path / "out")
    finally: ARTIFACTS.pop("t_evil")
    assert not (tmp_path / "escape.txt").exists() and not list((tmp_path / "out").rglob("*.txt"))
    assert not [p for p in tmp_path.rglob("*") if ".part" in p.name]  # no temporary folder left


def test_links_in_a_tar_are_refused(tmp_path):
    with tarfile.open(tmp_path / "evil.tar.gz", "w:gz") as archive:
        info = tarfile.TarInfo("labels/epoch_0"); info.type = tarfile.SYMTYPE; info.linkname = "/etc"
        archive.addfile(info)
    ARTIFACTS.pop("t_link", None); register_artifact(Artifact("t_link", "evil.tar.gz", "labels", "digits"))
    try:
        with pytest.raises(Sre2lError, match="is a link or special"):
            fetch("t_link", None, source=tmp_path / "evil.tar.gz", sha256=sha256_file(tmp_path / "evil.tar.gz"), data_dir=tmp_path / "out")
    finally: ARTIFACTS.pop("t_link")


def test_hub_path_checks_the_hubs_checksum(released, monkeypatch):
    "The download path with huggingface_hub stubbed (no network here): the Hub's LFS sha256 is what the file must match."
    huggingface_hub = pytest.importorskip("huggingface_hub")
    file = released / "fixture_images.zip"
    lfs = {"sha256": sha256_file(file)}
    class Info: pass
    info = Info(); info.lfs = lfs
    monkeypatch.setattr(huggingface_hub.HfApi, "get_paths_info", lambda self, repo, paths, repo_type=None: [info])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, filename, repo_type=None, cache_dir=None: str(file))
    record = fetch("t_images", None, data_dir=released / "published")
    assert record["sha256"] == lfs["sha256"] and Path(record["layout"]).name == "images"
    lfs["sha256"] = "f" * 64
    with pytest.raises(Sre2lError, match="expected f{64}"):
        fetch("t_images", None, data_dir=released / "other")


def test_command_line(tmp_path):
    "A registered name, from a local copy: unpacked and recorded; a wrong checksum is exit code 2."
    (tmp_path / "set" / "new000").mkdir(parents=True)
    (tmp_path / "set" / "new000" / "class000_id000.jpg").write_bytes(b"not really a jpeg")
    shutil.make_archive(tmp_path / "copy", "zip", tmp_path, "set")
    base = [tool("sre2l"), "fetch", "sre2l_tiny_rn18_1k_ipc50", "--from", str(tmp_path / "copy.zip"), "--data-dir", str(tmp_path / "out")]
    result = run([*base, "--sha256", sha256_file(tmp_path / "copy.zip")])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["layout"].endswith("set")
    result = run([*base, "--sha256", "1" * 64, "--data-dir", str(tmp_path / "out2")])
    assert result.returncode == 2 and "expected 1111" in result.stderr and "Traceback" not in result.stderr
