"""Recover: grouped execution equals one unit at a time; sharding, LPLD, PRISM, bf16 and compile paths."""
import shutil
from pathlib import Path

import pytest
import torch

from sre2l.presets import make_config
from sre2l.runs import read_manifest, sha256_file, save_tensors
from sre2l.data import get_dataset, read_distilled
from sre2l.models import create_model, save_model
from sre2l.squeeze import run_squeeze
from sre2l.models import load_teacher
from sre2l.recover import (run_recover, recover_group, work_units, group_units, draw_bn_teachers, MatchingLoss)

BASE = ["squeeze.epochs=2", "recover.ipc=3", "recover.iterations=6", "recover.batch_size=5", "device=cpu",
        "recover.snapshot_every=0"]


@pytest.fixture(scope="module")
def squeezed(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("squeezed")
    cfg = make_config("lpld_digits", BASE)  # class-wise statistics too
    run_squeeze(cfg, run_dir)
    return run_dir


def with_teacher(squeezed, target: Path) -> Path:
    shutil.copytree(squeezed / "squeeze", target / "squeeze")
    return target


def images_of(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): sha256_file(p) for p in sorted((run_dir / "recover" / "images").rglob("*.png"))}


def test_grouped_units_equal_units_one_by_one(squeezed):
    cfg = make_config("lpld_digits", BASE + ["recover.batch_mode=cross-class", "recover.bn_target=global"])
    spec, teacher = get_dataset("digits"), load_teacher(squeezed, cfg, "cpu")
    units = work_units(10, 3, 5)
    grouped, curves, _ = recover_group(teacher, units[:4], spec, cfg.recover, 0, "cpu", raw=True)
    for unit, together, curve in zip(units[:4], grouped, curves):
        (alone,), (alone_curve,), _ = recover_group(teacher, [unit], spec, cfg.recover, 0, "cpu", raw=True)
        assert (together - alone).abs().max() < 1e-4
        assert torch.allclose(torch.tensor(curve["bn"]), torch.tensor(alone_curve["bn"]), rtol=1e-4, atol=1e-4)


def test_group_size_does_not_change_the_files(squeezed, tmp_path):
    results = {}
    for size in (5, 30):
        cfg = make_config("lpld_digits", BASE + ["recover.batch_mode=cross-class", "recover.bn_target=global",
                                                 f"recover.group_images={size}"])
        run_dir = with_teacher(squeezed, tmp_path / f"g{size}")
        run_recover(cfg, run_dir)
        images = read_distilled(run_dir / "recover" / "images", 3, 1, 10).images.int()
        results[size] = images
    assert (results[5] - results[30]).abs().max() <= 1  # uint8 truncation of fp32-close images


def test_two_shards_make_the_same_files_as_one_process(squeezed, tmp_path):
    cfg = make_config("lpld_digits", BASE + ["recover.batch_mode=cross-class", "recover.bn_target=global",
                                             "recover.group_images=5"])
    single = with_teacher(squeezed, tmp_path / "single")
    run_recover(cfg, single)
    sharded = with_teacher(squeezed, tmp_path / "sharded")
    first = run_recover(cfg, sharded, shard=(0, 2))
    assert first["complete"] is False and first["units_left"] > 0
    assert read_manifest(sharded / "recover") is None
    second = run_recover(cfg, sharded, shard=(1, 2))
    assert second["stage"] == "recover" and read_manifest(sharded / "recover") is not None
    assert images_of(sharded) == images_of(single)


def test_lpld_class_targets_within_class(squeezed, tmp_path):
    cfg = make_config("lpld_digits", BASE)
    run_dir = with_teacher(squeezed, tmp_path / "lpld")
    manifest = run_recover(cfg, run_dir)
    assert manifest["images"] == 30
    with pytest.raises(Exception, match="batch_mode=within-class"):  # refused by the configuration, before any work
        make_config("lpld_digits", BASE + ["recover.batch_mode=cross-class"])


def test_prism_real_init_extra_bn_teachers_and_cyclic_budget(squeezed, tmp_path):
    extra = create_model("convnet-d2-w8", 10, 1, 16)
    save_model(extra, tmp_path / "extra.safetensors", dict(name="convnet-d2-w8", num_classes=10, in_channels=1, resolution=16))
    no_bn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    cfg = make_config("lpld_digits", BASE + [
        "recover.batch_mode=cross-class", "recover.bn_target=global", "recover.init=real", "recover.lr=0.05",
        "recover.iteration_schedule=prism-cyclic", f"recover.bn_teachers=file:{tmp_path / 'extra.safetensors'}",
        "recover.bn_teacher_prob=1.0"])
    assert draw_bn_teachers(cfg.recover, 0, 0) == (f"file:{tmp_path / 'extra.safetensors'}",)
    run_dir = with_teacher(squeezed, tmp_path / "prism")
    run_recover(cfg, run_dir)
    import json
    steps = {k: len(json.loads((run_dir / "recover" / "losses" / f"unit_{k}_0.json").read_text())["ce"]) for k in range(3)}
    assert steps == {0: 6, 1: 5, 2: 4}  # round(6 * (1 - k / 8)): 6, 5.25, 4.5
    images = read_distilled(run_dir / "recover" / "images", 3, 1, 10)
    assert images.images.float().std() > 10


def test_bf16_and_compile_paths_run(squeezed, tmp_path):
    cfg = make_config("lpld_digits", BASE + ["recover.batch_mode=cross-class", "recover.bn_target=global",
                                             "recover.precision=bf16"])
    spec, teacher = get_dataset("digits"), load_teacher(squeezed, cfg, "cpu")
    unit = work_units(10, 1, 5)[:1]
    (fp32,), _, _ = recover_group(teacher, unit, spec, make_config("lpld_digits", BASE).recover, 0, "cpu", raw=True)
    (bf16,), curves, _ = recover_group(teacher, unit, spec, cfg.recover, 0, "cpu", raw=True)
    assert torch.isfinite(bf16).all() and (bf16 - fp32).abs().mean() < 0.5
    # one compiled MatchingLoss serves every group of a run: two groups with other units, sizes and targets
    # must get what the eager path gives (compiled code does not re-check forward hooks, so hooks would fail this)
    rc = make_config("lpld_digits", BASE).recover
    compiled = torch.compile(MatchingLoss(teacher, rc.first_bn_multiplier, rc.precision))
    for group in (work_units(10, 1, 5)[:1], work_units(10, 1, 2)[2:5]):
        eager = recover_group(teacher, group, spec, rc, 0, "cpu", raw=True)[0]
        comp = recover_group(teacher, group, spec, rc, 0, "cpu", matching=compiled, raw=True)[0]
        assert all((a - b).abs().max() < 1e-3 for a, b in zip(eager, comp))


def test_sigkilled_recover_restarts_to_the_same_files(squeezed, tmp_path):
    import os, signal, subprocess, sys, time
    args = ["--preset", "lpld_digits", *sum((["--set", o] for o in BASE + [
        "recover.batch_mode=cross-class", "recover.bn_target=global", "recover.group_images=5",
        "recover.iterations=60", "recover.ipc=4"]), [])]
    sre2l = [sys.executable, "-m", "sre2l.cli", "recover"]
    env = {**os.environ, "SRE2L_NO_PROGRESS": "1"}
    clean = with_teacher(squeezed, tmp_path / "clean")
    assert subprocess.run(sre2l + ["--run-dir", str(clean), *args], env=env, capture_output=True).returncode == 0
    killed = with_teacher(squeezed, tmp_path / "killed")
    process = subprocess.Popen(sre2l + ["--run-dir", str(killed), *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((killed / "recover").rglob("*.png"))) < 10: time.sleep(0.05)
    process.send_signal(signal.SIGKILL); process.wait()
    written = len(list((killed / "recover").rglob("*.png")))
    assert 10 <= written < 40 and read_manifest(killed / "recover") is None, written
    assert subprocess.run(sre2l + ["--run-dir", str(killed), *args], env=env, capture_output=True).returncode == 0
    assert images_of(killed) == images_of(clean)
    assert read_manifest(killed / "recover")["artifacts"] == read_manifest(clean / "recover")["artifacts"]
