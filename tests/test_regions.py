"""FKD region stores: whole splits in shards, resume, several processes, teachers at their own view, FKD's files."""
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import RUN_RECORDS
from sre2l.core import Sre2lError
from sre2l.presets import make_config
from sre2l.runs import read_manifest, sha256_file, load_metadata
from sre2l.squeeze import run_squeeze
from sre2l.relabel import run_relabel
from sre2l.regions import (RegionStore, export_fkd_labels, import_fkd_labels, recover_labels, shard_file, region_images,
                           draw_regions)
from sre2l.validate import run_validate

SPLIT = ["squeeze.epochs=1", "squeeze.model=convnet-d2-w16", "relabel.mode=region", "relabel.images=train", "relabel.num_crops=4",
         "relabel.num_seg=2", "relabel.shard_images=300", "relabel.label_type=marginal_smoothing_k3", "device=cpu",
         "data.workers=0"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    "digits' whole training split (1,433 images) labelled in 5 shards of 300."
    run_dir = tmp_path_factory.mktemp("split")
    cfg = make_config("digits", SPLIT)
    run_squeeze(cfg, run_dir); run_relabel(cfg, run_dir)
    return run_dir, cfg


def _shards(run_dir):
    return {p.name: sha256_file(p) for p in sorted((run_dir / "relabel" / "regions").glob("*.safetensors"))}


def test_a_whole_split_is_labelled_in_shards(labelled):
    run_dir, cfg = labelled
    manifest = read_manifest(run_dir / "relabel")
    assert manifest["mode"] == "region" and manifest["split"] == "train" and manifest["images"] == 1433
    assert len(_shards(run_dir)) == 5 and manifest["storage"]["measured"] <= manifest["storage"]["predicted"] * 1.05
    assert manifest["teacher_input"]["size"] == 16 and manifest["label_type"] == "marginal_smoothing_k3"
    store = RegionStore(run_dir / "relabel")
    kept = store.get(torch.tensor([0, 299, 300, 1432]))
    assert kept["boxes"].shape == (4, 4, 4) and kept["indices"].shape == (4, 4, 3) and kept["values"].dtype == torch.float16
    boxes, _ = draw_regions(300, 16, 16, cfg.relabel, cfg.seed)  # crops come from the image's own seed
    assert torch.equal(kept["boxes"][2], boxes)
    q = recover_labels(kept["indices"][1], kept["values"][1], store.label_type, 10)
    assert torch.allclose(q.sum(1), torch.ones(4), atol=1e-3)


def test_a_restart_redoes_only_what_is_missing_or_damaged(labelled, tmp_path):
    run_dir, cfg = labelled
    clean = _shards(run_dir)
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, symlinks=True)
    (copy / "relabel" / "manifest.json").unlink()
    regions = copy / "relabel" / "regions"
    (regions / "shard_000001.safetensors").unlink()
    damaged = regions / "shard_000003.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:-50])  # truncated: redone, not trusted
    untouched = (regions / "shard_000000.safetensors").stat().st_mtime_ns
    run_relabel(cfg, copy)
    assert _shards(copy) == clean and (regions / "shard_000000.safetensors").stat().st_mtime_ns == untouched


def test_shards_of_other_settings_are_refused(labelled, tmp_path):
    run_dir, cfg = labelled
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, symlinks=True)
    (copy / "relabel" / "manifest.json").unlink()
    (copy / "relabel" / "regions" / "shard_000002.safetensors").unlink()
    warmer = make_config("digits", SPLIT + ["relabel.teacher_temperature=2.0"])
    with pytest.raises(Sre2lError, match=r"made with other settings \(teacher_temperature: 1.0 there, 2.0 now\)"):
        run_relabel(warmer, copy)
    assert not (copy / "relabel" / "regions" / "shard_000002.safetensors").exists()  # nothing written


def test_two_processes_split_the_shards(labelled, tmp_path):
    run_dir, cfg = labelled
    for name in ("squeeze",): shutil.copytree(run_dir / name, tmp_path / "shared" / name)
    sets = sum((["--set", s] for s in SPLIT), [])
    command = lambda part: [sys.executable, "-m", "sre2l.cli", "relabel", "--run-dir", str(tmp_path / "shared"), *sets,
                            "--shard", part]
    processes = [subprocess.Popen(command(p), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in ("0/2", "1/2")]
    outputs = [p.communicate(timeout=3600) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    if read_manifest(tmp_path / "shared" / "relabel") is None:  # both finished their half before the other: a third run seals it
        assert subprocess.run(command("0/1"), capture_output=True).returncode == 0
    assert _shards(tmp_path / "shared") == _shards(run_dir) and not list((tmp_path / "shared").rglob("*.claim"))


def test_a_student_trains_on_the_whole_split_from_the_store(labelled, tmp_path):
    run_dir, cfg = labelled
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, symlinks=True)
    student = make_config("digits", SPLIT + ["validate.images=train", "validate.loss=soft_ce", "validate.crops_per_image=2",
                                             "validate.epochs=2", "validate.eval_every=2", "validate.mix=cutmix"])
    manifest = run_validate(student, copy)
    assert manifest["metrics"]["images"] == 1433 and manifest["timings"]["seconds_per_epoch"] > 0
    assert "relabel" in manifest["inputs"] and 0 <= manifest["metrics"]["test_top1"] <= 100


def test_hard_and_online_students_of_the_split_need_no_store(labelled, tmp_path):
    run_dir, _ = labelled
    for labels, loss in (("hard", "ce"), ("online", "soft_ce")):
        folder = tmp_path / labels
        shutil.copytree(run_dir / "squeeze", folder / "squeeze")
        cfg = make_config("digits", SPLIT + ["validate.images=train", f"validate.labels={labels}", f"validate.loss={loss}",
                                             "validate.crops_per_image=2", "validate.epochs=1", "validate.eval_every=1"])
        manifest = run_validate(cfg, folder)
        assert manifest["metrics"]["images"] == 1433 and not (folder / "relabel").exists()


def test_a_teacher_labels_at_its_own_size_and_normalisation(labelled, tmp_path):
    run_dir, _ = labelled
    folder = tmp_path / "view"
    shutil.copytree(run_dir / "squeeze", folder / "squeeze")
    small = make_config("digits", SPLIT + ["relabel.teacher_input_size=24"])
    with pytest.raises(Sre2lError, match="the teacher cannot take 24-px crops"):  # the ConvNet's head is sized for 16 px
        run_relabel(small, folder)
    shutil.rmtree(folder); folder.mkdir()
    resnet = ["squeeze.model=resnet18", "squeeze.small_input=true", "relabel.shard_images=2000"]
    run_squeeze(make_config("digits", SPLIT + resnet), folder)
    cfg = make_config("digits", SPLIT + resnet + ["relabel.teacher_input_size=24", "relabel.teacher_mean=0.5", "relabel.teacher_std=0.25"])
    seen = []
    import sre2l.models
    plain = sre2l.models.load_model
    def watched(path):
        model = plain(path); model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:]))); return model
    sre2l.models.load_model = watched
    try: manifest = run_relabel(cfg, folder)
    finally: sre2l.models.load_model = plain
    assert set(seen) == {(24, 24)}  # the student's 16-px images, cropped and resampled at the teacher's 24 px
    assert manifest["teacher_input"] == {"size": 24, "mean": [0.5], "std": [0.25], "source": "relabel settings"}
    default = RegionStore(run_dir / "relabel").get(torch.arange(50))
    assert torch.equal(default["boxes"], RegionStore(folder / "relabel").get(torch.arange(50))["boxes"])  # the same regions


def test_fkd_files_round_trip(labelled, tmp_path):
    "The kit's store as FKD's per-image files and back: the same crops and labels."
    run_dir, cfg = labelled
    target = export_fkd_labels(run_dir, tmp_path / "fkd")
    files = sorted(target.rglob("*.tar"))
    assert len(files) == 1433 and files[0].parent.name.startswith("class")
    with pytest.raises(Sre2lError, match="--trust-pickle"):
        import_fkd_labels(target, cfg, tmp_path / "back")
    shutil.copytree(run_dir / "squeeze", tmp_path / "back" / "squeeze")
    manifest = import_fkd_labels(target, cfg, tmp_path / "back", trust_pickle=True)
    assert manifest["imported"] == 1433
    mine, theirs = RegionStore(run_dir / "relabel"), RegionStore(tmp_path / "back" / "relabel")
    everything = torch.arange(1433)
    a, b = mine.get(everything), theirs.get(everything)
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["flips"], b["flips"]) and torch.equal(a["indices"], b["indices"])
    assert torch.equal(a["values"], b["values"])


def test_fkd_files_written_in_fkd_layout_import(tmp_path):
    "A folder in FKD's layout, written here as FKD's generator writes it (numpy arrays, fp16), for an ImageNet-shaped split."
    from sre2l.imagefolder import make_imagefolder
    root = tmp_path / "shape"
    make_imagefolder(root, classes=2, train_per_class=3, val_per_class=1, workers=0)
    cfg = make_config("digits", ["data.name=imagenet-shape", "data.num_classes=2", f"data.root={root}", "squeeze.model=convnet-d2-w8",
                                 "squeeze.epochs=1", "relabel.mode=region", "relabel.images=train", "relabel.num_crops=5",
                                 "relabel.num_seg=5", "relabel.label_type=marginal_smoothing_k2", "device=cpu", "data.workers=0"])
    rng, written = np.random.default_rng(0), {}
    for path in sorted((root / "train").rglob("*.JPEG")):
        coords = np.concatenate([rng.uniform(0, 0.5, (5, 2)), rng.uniform(0.3, 0.5, (5, 2))], 1).astype(np.float16)
        labels = np.stack([np.stack([rng.permutation(2) for _ in range(5)]), rng.uniform(0, 0.5, (5, 2))], 1).astype(np.float16)
        content = [coords, rng.uniform(size=5) > 0.5, labels]
        out = tmp_path / "FKD" / "train" / path.parent.name / f"{path.stem}.tar"
        out.parent.mkdir(parents=True, exist_ok=True); torch.save(content, out); written[f"{path.parent.name}/{path.stem}"] = content
    run_squeeze(cfg, tmp_path / "run")
    import_fkd_labels(tmp_path / "FKD" / "train", cfg, tmp_path / "run", trust_pickle=True)
    store = RegionStore(tmp_path / "run" / "relabel")
    first = written[sorted(written)[0]]
    kept = store.get(torch.tensor([0]))
    assert np.allclose(kept["boxes"][0].numpy(), first[0].astype(np.float32)) and np.array_equal(kept["flips"][0].numpy().astype(bool), first[1])
    assert np.array_equal(kept["indices"][0].numpy(), first[2][:, 0].astype(int)) and np.allclose(kept["values"][0].numpy(), first[2][:, 1])
    bad = tmp_path / "FKD" / "train" / sorted(written)[1].split("/")[0] / (sorted(written)[1].split("/")[1] + ".tar")
    torch.save([first[0], first[1], first[2][:, 0]], bad)  # labels of the wrong shape for marginal_smoothing_k2
    shutil.rmtree(tmp_path / "run" / "relabel")
    with pytest.raises(Sre2lError, match=r"is not an FKD label file of 5 crops of type marginal_smoothing_k2"):
        import_fkd_labels(tmp_path / "FKD" / "train", cfg, tmp_path / "run", trust_pickle=True)
    assert read_manifest(tmp_path / "run" / "relabel", verify=False) is None


def test_a_reference_store_must_label_the_same_images_with_enough_crops(labelled, tmp_path):
    run_dir, _ = labelled
    folder = tmp_path / "second"
    shutil.copytree(run_dir / "squeeze", folder / "squeeze")
    more = make_config("digits", SPLIT + ["relabel.num_crops=6", "relabel.num_seg=2", f"relabel.reference={run_dir / 'relabel'}"])
    with pytest.raises(Sre2lError, match="has 4 crops per image; this run needs 6"):
        run_relabel(more, folder)
    same = make_config("digits", SPLIT + ["relabel.label_type=hard", f"relabel.reference={run_dir / 'relabel'}"])
    run_relabel(same, folder)
    assert torch.equal(RegionStore(folder / "relabel").get(torch.arange(20))["boxes"], RegionStore(run_dir / "relabel").get(torch.arange(20))["boxes"])


def test_the_fkd_table_runs_through_the_driver_at_ci_size(tmp_path):
    "fkd_fashion_mnist's three cells through the stage notebooks, on digits and short: each measured, with its speed."
    import dataclasses
    from sre2l.tables import get_table
    from sre2l.reproduce import reproduce
    spec = get_table("fkd_fashion_mnist")
    short = ("squeeze.epochs=1", "relabel.num_crops=4", "relabel.num_seg=2", "validate.epochs=2", "validate.eval_every=2",
             "device=cpu", "data.workers=0")
    cells = [dataclasses.replace(c, preset="digits", overrides=(*c.overrides, *short)) for c in spec.cells]
    small = dataclasses.replace(spec, name="fkd_ci", cells=cells, seeds=(0,))
    report = reproduce(small, tmp_path / "runs", tmp_path / "tables")  # through the notebooks, as a user runs it
    assert report["measured"] == 3 and not report["failed"], report["failed"]
    assert all(c["seconds_per_epoch"] > 0 and 0 <= c["measured"] <= 100 for c in report["cells"])
    assert [c["label_bytes"] is not None for c in report["cells"]] == [False, False, True]  # only (c) stores labels
    table = (tmp_path / "tables" / "fkd_ci" / "fkd_ci.md").read_text()
    assert "| s/epoch |" in table and "(c) stored FKD region labels" in table
    assert "| (a) hard labels | " in table and table.count("| none |") == 2  # no store for (a) and (b)
