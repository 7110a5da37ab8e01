"""Reliability: bad input gets one clear message and exit code 2, with nothing half-written left behind.

Run alone with `pytest -m reliability`. Each row of CASES is one mistake a user can make: the command line,
a fragment the one-line error must contain, and the stage folder that must stay unfinished.
"""
import shutil
from pathlib import Path

import pytest
import torch

from sre2l.cli import main
from sre2l.core import make_config, read_manifest
from sre2l.squeeze import run_squeeze
from sre2l.recover import run_recover
from sre2l.relabel import run_relabel
from conftest import RUN_RECORDS

pytestmark = pytest.mark.reliability

TINY = ["squeeze.epochs=1", "recover.ipc=2", "recover.iterations=3", "relabel.epochs=2", "relabel.batch_size=8",
        "validate.epochs=2", "device=cpu"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    "A run folder with squeeze, recover and relabel done (digits, tiny settings)."
    run_dir = tmp_path_factory.mktemp("finished")
    cfg = make_config("digits", TINY)
    for stage in (run_squeeze, run_recover, run_relabel): stage(cfg, run_dir)
    return run_dir


def sets(*overrides):
    return sum((["--set", o] for o in [*TINY, *overrides]), [])


# (case, arguments ({run} = a copy of the finished run, {recovered} / {squeezed} = copies holding only the stages up to
#  recover / squeeze, {damaged} = a run with a truncated label file, {empty} = an empty folder, {tmp} = a new folder),
#  fragment of the error line, stage folder that must not be finished afterwards or None)
CASES = [
    ("unknown preset", ["config", "--preset", "nope"], "unknown preset 'nope'", None),
    ("unknown --set key", ["config", "--set", "recover.lrr=1"], "unknown config key 'recover.lrr'; did you mean recover.lr", None),
    ("value of the wrong type", ["config", "--set", "recover.ipc=ten"], "recover.ipc='ten' is not a valid int", None),
    ("--set without a value", ["config", "--set", "recover.ipc"], "--set expects key=value", None),
    ("missing data set", ["squeeze", "--run-dir", "{tmp}", *sets("data.name=imagenet-1k", "data.root=/nonexistent")],
     "data set 'imagenet-1k' not found", "squeeze"),
    ("CUDA asked for on a machine without it", ["squeeze", "--run-dir", "{tmp}", *sets("device=cuda")],
     "torch sees no CUDA device", "squeeze"),
    ("a teacher checkpoint with another class count", ["squeeze", "--run-dir", "{tmp}", *sets("squeeze.checkpoint={five}")],
     "classifier.weight is [5, 256] in the file but [10, 256] here", "squeeze"),
    ("a truncated teacher checkpoint", ["squeeze", "--run-dir", "{tmp}", *sets("squeeze.checkpoint={truncated}")],
     "is not a readable safetensors file", "squeeze"),
    ("recover before squeeze", ["recover", "--run-dir", "{empty}", *sets()], "has no finished squeeze stage", "recover"),
    ("validate before relabel", ["validate", "--run-dir", "{empty}", *sets()], "has no finished relabel stage", "validate"),
    ("more real images per class than exist", ["recover", "--run-dir", "{squeezed}", *sets("recover.method=real", "recover.ipc=1000")],
     "fewer than ipc=1000", "recover"),
    ("prune ratio of 1", ["relabel", "--run-dir", "{recovered}", *sets("relabel.prune_ratio=1.0")], "relabel.prune_ratio", "relabel"),
    ("negative prune ratio", ["relabel", "--run-dir", "{recovered}", *sets("relabel.prune_ratio=-0.1")], "relabel.prune_ratio", "relabel"),
    ("validate with another stored batch size", ["validate", "--run-dir", "{run}", *sets("relabel.batch_size=16")],
     "relabel.batch_size: 8 in the folder, 16 now", "validate"),
    ("more epochs than the store holds", ["validate", "--run-dir", "{run}", *sets("validate.epochs=5")],
     "validate.epochs=5 but the label store has only 2 complete epochs", "validate"),
    ("a damaged label file", ["validate", "--run-dir", "{damaged}", *sets()], "changed after", "validate"),
    ("official labels without --trust-pickle", ["import-labels", "{official}", "--run-dir", "{run}", *sets()],
     "--trust-pickle", None),
    ("num_crops not a multiple of num_seg", ["relabel", "--run-dir", "{recovered}", *sets("relabel.mode=region", "relabel.num_crops=5",
                                                                                   "relabel.num_seg=2")],
     "relabel.num_crops=5 must be a multiple of relabel.num_seg=2", "relabel"),
    ("unknown relabel mode", ["relabel", "--run-dir", "{recovered}", *sets("relabel.mode=pool")], "relabel.mode must be", "relabel"),
    ("unknown mixing", ["relabel", "--run-dir", "{recovered}", *sets("relabel.mix=blend")], "relabel.mix must be", "relabel"),
    ("top-k of zero classes", ["relabel", "--run-dir", "{recovered}", *sets("relabel.logits=topk", "relabel.topk=0")],
     "relabel.topk must be between 1 and 10", "relabel"),
    ("unknown recover precision", ["recover", "--run-dir", "{squeezed}", *sets("recover.precision=fp16")],
     "recover.precision must be 'fp32' or 'bf16'", "recover"),
    ("class statistics with cross-class batches", ["recover", "--run-dir", "{squeezed}", *sets("recover.bn_target=class")],
     "set recover.batch_mode=within-class", "recover"),
    ("zero training epochs", ["validate", "--run-dir", "{run}", *sets("validate.epochs=0")], "validate.epochs must be positive", "validate"),
    ("unknown loss", ["validate", "--run-dir", "{run}", *sets("validate.loss=l1")], "validate.loss must be one of", "validate"),
    ("unknown label source", ["validate", "--run-dir", "{run}", *sets("validate.labels=live")], "validate.labels must be", "validate"),
    ("region loss on an FKD-mix store", ["validate", "--run-dir", "{run}", *sets("validate.loss=soft_ce")],
     "holds FKD-mix teacher logits, which validate.loss=soft_ce cannot train from", "validate"),
    ("unknown label pool", ["validate", "--run-dir", "{run}", *sets("validate.pool_granularity=image", "validate.epochs=1")],
     "validate.pool_granularity must be", "validate"),
    ("zero accumulation steps", ["validate", "--run-dir", "{run}", *sets("validate.accumulation_steps=0")],
     "validate.accumulation_steps must be positive", "validate"),
    ("a shard that does not exist", ["recover", "--run-dir", "{squeezed}", "--shard", "3/2", *sets()], "--shard expects I/N", None),
    ("a table that does not exist", ["reproduce", "sre2l_mian", "--run-dir", "{run}"], "unknown table 'sre2l_mian'", None),
]


def _prepare(args, finished: Path, tmp_path: Path) -> list[str]:
    run = tmp_path / "run"
    shutil.copytree(finished, run, symlinks=True)
    for name, keep in (("recovered", ("squeeze", "recover")), ("squeezed", ("squeeze",))):
        for stage in keep: shutil.copytree(finished / stage, tmp_path / name / stage)
        shutil.copy(finished / "config.json", tmp_path / name / "config.json")
    damaged = tmp_path / "damaged"
    shutil.copytree(finished, damaged, symlinks=True)
    label = next((damaged / "relabel" / "labels").glob("*.safetensors"))
    label.write_bytes(label.read_bytes()[: label.stat().st_size // 2])  # truncated
    official = tmp_path / "official" / "epoch_0"
    official.mkdir(parents=True)
    torch.save([torch.zeros(2, 4)], official / "batch_0.tar")
    (tmp_path / "empty").mkdir()
    from sre2l.models import create_model, save_model
    build = dict(name="convnet-d3-w64", num_classes=5, in_channels=1, resolution=16)
    save_model(create_model(**build), tmp_path / "five.safetensors", build)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((finished / "squeeze" / "teacher.safetensors").read_bytes()[:1000])
    folders = {"{run}": run, "{recovered}": tmp_path / "recovered", "{squeezed}": tmp_path / "squeezed", "{damaged}": damaged, "{official}": tmp_path / "official", "{empty}": tmp_path / "empty",
               "{tmp}": tmp_path / "scratch", "{five}": tmp_path / "five.safetensors", "{truncated}": truncated}
    out = []
    for a in args:
        for key, folder in folders.items(): a = a.replace(key, str(folder))
        out.append(a)
    return out


@pytest.mark.parametrize("case, args, fragment, stage", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, args, fragment, stage, finished, tmp_path, capsys):
    argv = _prepare(args, finished, tmp_path)
    try: code = main(argv)
    except SystemExit as exit: code = exit.code  # argparse's own usage errors
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and fragment in errors[0], err
    assert "Traceback" not in err
    run_dir = Path(argv[argv.index("--run-dir") + 1]) if "--run-dir" in argv else None
    if run_dir is not None and run_dir.exists():
        assert not list(run_dir.rglob("*.tmp")), "a temporary file was left behind"
        if stage is not None: assert read_manifest(run_dir / stage, verify=False) is None, f"{stage} was marked finished"


def test_the_table_has_at_least_25_cases():
    assert len(CASES) >= 25


def test_disk_too_small_is_refused_before_anything_is_written(finished, tmp_path, monkeypatch, capsys):
    import collections
    run = tmp_path / "run"
    shutil.copytree(finished, run, symlinks=True)
    shutil.rmtree(run / "relabel")
    Usage = collections.namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1000, 1000))
    assert main(["relabel", "--run-dir", str(run), *sets()]) == 2
    err = capsys.readouterr().err
    assert "needs about" in err and "has only 1.0 kB free" in err
    assert not (run / "relabel" / "labels").exists() or not list((run / "relabel" / "labels").iterdir())


def test_a_papermill_parameter_of_the_wrong_type_is_refused():
    from sre2l.core import notebook_overrides, ConfigError
    with pytest.raises(ConfigError, match="recover.ipc='ten' is not a valid int"):
        make_config("digits", notebook_overrides({"ipc": "ten", "_names": None}, {"_names"}))


def test_bn_matching_needs_a_teacher_with_batchnorm(finished, tmp_path):
    from sre2l.recover import check_teacher
    from sre2l.core import Sre2lError
    with pytest.raises(Sre2lError, match="has no BatchNorm2d layers"):
        check_teacher(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten()), make_config("digits").recover)


def _recover_cli(run_dir, extra=()):
    import sys
    return [sys.executable, "-m", "sre2l.cli", "recover", "--run-dir", str(run_dir),
            *sets("recover.ipc=4", "recover.iterations=20", "recover.group_images=10", *extra)]


def _images(run_dir):
    from sre2l.core import sha256_file
    return {p.name: sha256_file(p) for p in sorted((run_dir / "recover" / "images").rglob("*.png"))}


def test_a_group_claimed_by_a_live_process_is_left_to_it(finished, tmp_path):
    import os, subprocess
    from sre2l.core import claim, release
    env = {**os.environ, "SRE2L_NO_PROGRESS": "1"}
    for name in ("clean", "shared"): shutil.copytree(finished / "squeeze", tmp_path / name / "squeeze")
    assert subprocess.run(_recover_cli(tmp_path / "clean"), env=env, capture_output=True).returncode == 0
    ticket = tmp_path / "shared" / "recover" / "claims" / "group_1_0.claim"
    assert claim(ticket)  # this (live) test process holds the group of IPC index 1
    result = subprocess.run(_recover_cli(tmp_path / "shared"), env=env, capture_output=True, text=True)
    assert result.returncode == 0 and '"units_left": 1' in result.stdout, result.stdout + result.stderr
    assert read_manifest(tmp_path / "shared" / "recover") is None and len(_images(tmp_path / "shared")) == 30
    release(ticket)
    assert subprocess.run(_recover_cli(tmp_path / "shared"), env=env, capture_output=True).returncode == 0
    assert _images(tmp_path / "shared") == _images(tmp_path / "clean")


def test_two_processes_on_one_folder_finish_it_without_damage(finished, tmp_path):
    import os, subprocess
    env = {**os.environ, "SRE2L_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    for name in ("clean", "shared"): shutil.copytree(finished / "squeeze", tmp_path / name / "squeeze")
    assert subprocess.run(_recover_cli(tmp_path / "clean"), env=env, capture_output=True).returncode == 0
    both = [subprocess.Popen(_recover_cli(tmp_path / "shared"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in both]
    assert all(p.returncode == 0 for p in both), outputs
    if read_manifest(tmp_path / "shared" / "recover") is None:  # both stopped before the last group: a third run seals it
        assert subprocess.run(_recover_cli(tmp_path / "shared"), env=env, capture_output=True).returncode == 0
    assert _images(tmp_path / "shared") == _images(tmp_path / "clean")
    assert not list((tmp_path / "shared" / "recover").rglob("*.claim")) and not list((tmp_path / "shared").rglob("*.tmp"))


@pytest.mark.parametrize("stage, extra, outputs", [
    ("recover", ["recover.ipc=4", "recover.iterations=60", "recover.group_images=10"], "recover/images"),
    ("relabel", ["relabel.epochs=40"], "relabel/labels"),
    ("validate", ["relabel.epochs=2", "validate.epochs=40", "validate.checkpoint_every=1", "validate.eval_every=40",
                  "validate.pool_granularity=batch", "validate.pool_metric=random"], "validate/student.safetensors"),
])
def test_killed_five_times_at_random_points_then_finished_equals_a_clean_run(stage, extra, outputs, finished, tmp_path):
    import os, random, signal, subprocess, sys, time
    from sre2l.core import sha256_file
    keep = {"recover": ("squeeze",), "relabel": ("squeeze", "recover"), "validate": ("squeeze", "recover", "relabel")}[stage]
    env = {**os.environ, "SRE2L_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    command = lambda run_dir: [sys.executable, "-m", "sre2l.cli", stage, "--run-dir", str(run_dir), *sets(*extra)]
    for name in ("clean", "killed"):
        for kept in keep: shutil.copytree(finished / kept, tmp_path / name / kept)
    assert subprocess.run(command(tmp_path / "clean"), env=env, capture_output=True).returncode == 0
    rng = random.Random(f"{stage}-kills")
    for _ in range(5):  # SIGKILL at a random moment, five times, restarting in the same folder each time
        process = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 6.0))
        process.send_signal(signal.SIGKILL); process.wait()
    assert subprocess.run(command(tmp_path / "killed"), env=env, capture_output=True).returncode == 0
    digest = lambda run_dir: {str(p.relative_to(run_dir)): sha256_file(p) for p in sorted((run_dir / outputs).parent.rglob("*"))
                              if p.is_file() and p.name not in RUN_RECORDS and "claims" not in p.parts}
    assert digest(tmp_path / "killed") == digest(tmp_path / "clean")
    assert not list((tmp_path / "killed").rglob("*.tmp"))
