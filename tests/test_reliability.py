"""Reliability: bad input gets one clear message and exit code 2, with nothing half-written left behind.

Run alone with `pytest -m reliability`. Each row of CASES is one mistake a user can make: the command line,
a fragment the one-line error must contain, and the stage folder that must stay unfinished.
"""
import shutil
from pathlib import Path

import pytest
import torch

from sre2l.cli import main
from sre2l.data import write_image
from sre2l.presets import make_config
from sre2l.runs import read_manifest
from sre2l.squeeze import run_squeeze
from sre2l.recover import run_recover
from sre2l.relabel import run_relabel
from conftest import RUN_RECORDS, default_sigint

pytestmark = pytest.mark.reliability

SHAPE = ["--set", "data.name=imagenet-shape", "--set", "data.num_classes=2", "--set", "squeeze.model=convnet-d2-w8",
         "--set", "squeeze.epochs=1", "--set", "device=cpu", "--set", "data.workers=0"]
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
    # --- names, types and values: refused by make_config before anything runs ---
    ("unknown preset", ["config", "--preset", "nope"], "unknown preset 'nope'", None),
    ("unknown --set key", ["config", "--set", "recover.lrr=1"], "unknown config key 'recover.lrr'; did you mean recover.lr", None),
    ("value of the wrong type", ["config", "--set", "recover.ipc=ten"], "recover.ipc='ten' is not a whole number", None),
    ("--set without a value", ["config", "--set", "recover.ipc"], "--set expects key=value", None),
    ("a count that is not whole", ["config", "--set", "recover.ipc=2.5e0"], "recover.ipc='2.5e0' is not a whole number", None),
    ("a misspelt choice", ["config", "--set", "relabel.mix=cutmx"], "relabel.mix='cutmx' is not one of 'cutmix', 'mixup', 'none'", None),
    ("an infinite learning rate", ["config", "--set", "validate.lr=inf"], "validate.lr=inf is not a finite number", None),
    ("a NaN weight", ["config", "--set", "recover.r_bn=nan"], "recover.r_bn=nan is not a finite number", None),
    ("a negative learning rate", ["config", "--set", "squeeze.lr=-0.1"], "squeeze.lr=-0.1 is outside (0, inf)", None),
    ("a temperature of zero", ["config", "--set", "validate.temperature=0"], "validate.temperature=0.0 is outside (0, inf)", None),
    ("negative epochs", ["config", "--set", "squeeze.epochs=-5"], "squeeze.epochs=-5 is outside [0, 100000]", None),
    ("a JPEG quality of 500", ["config", "--set", "recover.jpeg_quality=500"], "recover.jpeg_quality=500 is outside [1, 100]", None),
    ("a batch size of 0", ["config", "--set", "relabel.batch_size=0"], "relabel.batch_size=0 is outside [1, 1000000]", None),
    ("a seed beyond 64 bits", ["config", "--set", "seed=99999999999999999999"], "is outside [0, 9223372036854775807]", None),
    ("an empty device", ["config", "--set", "device="], "device='' is not one of 'auto', 'cpu', 'cuda', 'cuda:N'", None),
    ("device=gpu", ["config", "--set", "device=gpu"], "device='gpu' is not one of", None),
    ("crop scale min above max", ["config", "--set", "relabel.crop_scale_min=0.9", "--set", "relabel.crop_scale_max=0.5"],
     "relabel.crop_scale_min=0.9 exceeds relabel.crop_scale_max=0.5", None),
    ("a negative CutMix alpha", ["config", "--set", "relabel.cutmix_alpha=-1"], "relabel.cutmix_alpha=-1.0 is outside (0, inf)", None),
    ("prune ratio of 1", ["config", "--set", "relabel.prune_ratio=1.0"], "relabel.prune_ratio=1.0 is outside [0, 1)", None),
    ("negative prune ratio", ["config", "--set", "relabel.prune_ratio=-0.1"], "relabel.prune_ratio=-0.1 is outside [0, 1)", None),
    ("a billion stored epochs", ["relabel", "--run-dir", "{recovered}", *sets("relabel.epochs=1e9")],
     "relabel.epochs=1000000000 is outside [1, 100000]", "relabel"),
    ("a trillion images per class", ["recover", "--run-dir", "{squeezed}", *sets("recover.ipc=1e12")],
     "recover.ipc=1000000000000 is outside [1, 100000]", "recover"),
    ("ten billion iterations", ["recover", "--run-dir", "{squeezed}", *sets("recover.iterations=1e10")],
     "recover.iterations=10000000000 is outside", "recover"),
    ("an unknown model", ["config", "--set", "validate.model=resnet19"], "validate.model: unknown model 'resnet19'; did you mean resnet18", None),
    ("an unknown data set", ["config", "--set", "data.name=imagenet1k"], "unknown data set 'imagenet1k'; did you mean imagenet-1k", None),
    ("a class count for a fixed data set", ["config", "--set", "data.num_classes=5"], "data set 'digits' has 10 classes", None),
    ("an unknown FKD label type", ["config", "--set", "relabel.label_type=marginal_k5"], "relabel.label_type='marginal_k5' is not one of", None),
    ("both weights and a checkpoint", ["config", "--set", "squeeze.weights=IMAGENET1K_V1", "--set", "squeeze.checkpoint=x.pth"],
     "give squeeze.weights or squeeze.checkpoint, not both", None),
    ("GPU decoding on the CPU", ["config", "--set", "data.decode=gpu", "--set", "device=cpu"], "data.decode=gpu decodes on the GPU", None),
    ("top-k beyond the classes", ["config", "--set", "relabel.logits=topk", "--set", "relabel.topk=11"],
     "relabel.topk=11 exceeds the 10 classes of digits", None),
    ("num_crops not a multiple of num_seg", ["relabel", "--run-dir", "{recovered}", *sets("relabel.mode=region", "relabel.num_crops=5",
                                                                                   "relabel.num_seg=2")],
     "relabel.num_crops=5 must be a multiple of relabel.num_seg=2", "relabel"),
    ("unknown relabel mode", ["relabel", "--run-dir", "{recovered}", *sets("relabel.mode=pool")], "relabel.mode='pool' is not one of", "relabel"),
    ("unknown mixing", ["relabel", "--run-dir", "{recovered}", *sets("relabel.mix=blend")], "relabel.mix='blend' is not one of", "relabel"),
    ("top-k of zero classes", ["relabel", "--run-dir", "{recovered}", *sets("relabel.logits=topk", "relabel.topk=0")],
     "relabel.topk=0 is outside [1, 1000000]", "relabel"),
    ("unknown recover precision", ["recover", "--run-dir", "{squeezed}", *sets("recover.precision=fp16")],
     "recover.precision='fp16' is not one of 'fp32', 'bf16'", "recover"),
    ("class statistics with cross-class batches", ["recover", "--run-dir", "{squeezed}", *sets("recover.bn_target=class")],
     "set recover.batch_mode=within-class", "recover"),
    ("zero training epochs", ["validate", "--run-dir", "{run}", *sets("validate.epochs=0")], "validate.epochs=0 is outside [1, 100000]", "validate"),
    ("unknown loss", ["validate", "--run-dir", "{run}", *sets("validate.loss=l1")], "validate.loss='l1' is not one of", "validate"),
    ("unknown label source", ["validate", "--run-dir", "{run}", *sets("validate.labels=live")], "validate.labels='live' is not one of", "validate"),
    ("region loss on an FKD-mix store", ["validate", "--run-dir", "{run}", *sets("validate.loss=soft_ce")],
     "holds FKD-mix teacher logits, which validate.loss=soft_ce cannot train from", "validate"),
    ("online labels with plain cross-entropy", ["config", "--set", "validate.labels=online", "--set", "validate.loss=ce"],
     "validate.labels=online trains with validate.loss=kl, mse_gt or soft_ce, not ce", None),
    ("mse_gt on top-k logits", ["config", "--set", "validate.loss=mse_gt", "--set", "relabel.logits=topk"],
     "validate.loss=mse_gt compares every raw logit: it needs relabel.logits=fp16", None),
    ("unknown label pool", ["validate", "--run-dir", "{run}", *sets("validate.pool_granularity=image", "validate.epochs=1")],
     "validate.pool_granularity='image' is not one of", "validate"),
    ("zero accumulation steps", ["validate", "--run-dir", "{run}", *sets("validate.accumulation_steps=0")],
     "validate.accumulation_steps=0 is outside", "validate"),
    # --- data, files and folders: one line naming the path ---
    ("missing data set", ["squeeze", "--run-dir", "{tmp}", *sets("data.name=imagenet-1k", "data.root=/nonexistent")],
     "data set 'imagenet-1k' not found", "squeeze"),
    ("CUDA asked for on a machine without it", ["squeeze", "--run-dir", "{tmp}", *sets("device=cuda")],
     "torch sees no CUDA device", "squeeze"),
    ("a teacher checkpoint with another class count", ["squeeze", "--run-dir", "{tmp}", *sets("squeeze.checkpoint={five}")],
     "classifier.weight is [5, 256] in the file but [10, 256] here", "squeeze"),
    ("a truncated teacher checkpoint", ["squeeze", "--run-dir", "{tmp}", *sets("squeeze.checkpoint={truncated}")],
     "is not a readable safetensors file", "squeeze"),
    ("a pickled model as the teacher", ["squeeze", "--run-dir", "{tmp}", *sets("squeeze.checkpoint={pickled}")],
     "is not a weights-only checkpoint: it holds a pickled", "squeeze"),
    ("random bytes as the teacher", ["squeeze", "--run-dir", "{tmp}", *sets("squeeze.checkpoint={random}")],
     "is not a torch or safetensors file", "squeeze"),
    ("int8 weights", ["squeeze", "--run-dir", "{tmp}", *sets("squeeze.checkpoint={int8}")], "holds torch.int8 values", "squeeze"),
    ("bool weights", ["squeeze", "--run-dir", "{tmp}", *sets("squeeze.checkpoint={bool}")], "holds torch.bool values", "squeeze"),
    ("a corrupt JPEG in an ImageNet-shaped folder", ["squeeze", "--run-dir", "{tmp}", *SHAPE, "--set", "data.root={corrupt_folder}"],
     "is not a readable image", "squeeze"),
    ("a class folder without images", ["squeeze", "--run-dir", "{tmp}", *SHAPE, "--set", "data.root={empty_class_folder}"],
     "holds no images", "squeeze"),
    ("train and val with other class folders", ["squeeze", "--run-dir", "{tmp}", *SHAPE, "--set", "data.root={mismatched_folder}"],
     "have different class folders", "squeeze"),
    ("recover before squeeze", ["recover", "--run-dir", "{empty}", *sets()], "has no finished squeeze stage", "recover"),
    ("validate in an empty run folder", ["validate", "--run-dir", "{empty}", *sets()], "has no finished recover stage", "validate"),
    ("validate before relabel", ["validate", "--run-dir", "{recovered}", *sets()], "has no finished relabel stage", "validate"),
    ("more real images per class than exist", ["recover", "--run-dir", "{squeezed}", *sets("recover.method=real", "recover.ipc=1000")],
     "fewer than ipc=1000", "recover"),
    ("validate with another stored batch size", ["validate", "--run-dir", "{run}", *sets("relabel.batch_size=16")],
     "relabel.batch_size: 8 in the folder, 16 now", "validate"),
    ("more epochs than the store holds", ["validate", "--run-dir", "{run}", *sets("validate.epochs=5")],
     "validate.epochs=5 but the label store has only 2 complete epochs", "validate"),
    ("a damaged label file", ["validate", "--run-dir", "{damaged}", *sets()], "changed after", "validate"),
    ("an empty manifest of the input stage", ["validate", "--run-dir", "{empty_manifest}", *sets()],
     "relabel/manifest.json is damaged", "validate"),
    ("a manifest of {} as the input stage", ["relabel", "--run-dir", "{curly_manifest}", *sets()],
     "recover/manifest.json is damaged (not a finished stage's manifest); run `sre2l recover", "relabel"),
    ("a run folder that is a file", ["squeeze", "--run-dir", "{a_file}", *sets()], "is a file, not a folder", None),
    ("a run folder that is a symbolic link loop", ["squeeze", "--run-dir", "{link_loop}", *sets()],
     "is a symbolic link that leads nowhere", None),
    ("an empty run folder name", ["squeeze", "--run-dir", "", *sets()], "the run folder is empty (--run-dir '')", None),
    ("config.json that is a folder", ["squeeze", "--run-dir", "{config_folder}", *sets()],
     "config.json: a folder stands where a file is needed", "squeeze"),
    ("official labels without --trust-pickle", ["import-labels", "{official}", "--run-dir", "{recovered}", *sets()],
     "--trust-pickle", "relabel"),
    ("a stray file among official label batches", ["import-labels", "{stray_labels}", "--trust-pickle", "--run-dir", "{recovered}",
                                                    *sets("relabel.batch_size=32", "relabel.order=official")],
     "batch_x.tar is not an official batch_<n> entry", "relabel"),
    ("official labels over a store made with other settings", ["import-labels", "{official}", "--trust-pickle", "--run-dir", "{run}",
                                                              *sets("relabel.batch_size=32", "relabel.order=official")],
     "was made with a different configuration (relabel.batch_size: 8 in the folder, 32 now", None),
    ("a zero-byte image to import", ["import-images", "{zero_byte_images}", "--run-dir", "{squeezed}", *sets()],
     "is not a readable image", "recover"),
    ("a truncated image to import", ["import-images", "{truncated_images}", "--run-dir", "{squeezed}", *sets()],
     "is not a readable image", "recover"),
    ("an image of another size to import", ["import-images", "{resized_images}", "--run-dir", "{squeezed}", *sets()],
     "pixels, but the other images of its set are 16x16", "recover"),
    ("an extra class folder to import", ["import-images", "{extra_class_images}", "--run-dir", "{squeezed}", *sets()],
     "is an image of class 10, but the data set has 10 classes", "recover"),
    ("an unknown file among images to import", ["import-images", "{stray_images}", "--run-dir", "{squeezed}", *sets()],
     "notes.txt is not named class<c>_id<k>", "recover"),
    ("--data-dir pointing at a file", ["fetch", "sre2l_in1k_rn18_2k_ipc50", "--from", "{a_file}", "--sha256", "{a_file_sha}",
                                       "--data-dir", "{a_file}"], "is a file, not a folder", None),
    ("a shard that does not exist", ["recover", "--run-dir", "{squeezed}", "--shard", "3/2", *sets()], "allowed: I/N with 0 <= I < N", None),
    ("a table that does not exist", ["reproduce", "sre2l_mian", "--run-dir", "{run}"], "unknown table 'sre2l_mian'", None),
]


def _images_folder(tmp_path: Path, finished: Path, name: str, damage) -> Path:
    "A copy of the finished run's distilled images, damaged by `damage(folder)`."
    folder = tmp_path / name
    shutil.copytree(finished / "recover" / "images", folder)
    damage(folder)
    return folder


def _shape_folder(tmp_path: Path, name: str, damage) -> Path:
    "A 2-class imagenet-shape folder, damaged by `damage(folder)`."
    from sre2l.imagefolder import make_imagefolder
    folder = tmp_path / name
    make_imagefolder(folder, classes=2, train_per_class=3, val_per_class=2, workers=0)
    damage(folder)
    return folder


def _builders(finished: Path, tmp_path: Path) -> dict:
    "{placeholder: function making what it stands for}; only the placeholders a case names are built."
    from sre2l.models import create_model, save_model
    from sre2l.runs import sha256_file
    def copy(*stages):
        target = tmp_path / "_".join(stages)
        for stage in stages: shutil.copytree(finished / stage, target / stage, symlinks=True)
        shutil.copy(finished / "config.json", target / "config.json")
        return target
    def run_with(change):
        target = tmp_path / f"run-{change.__name__}"
        shutil.copytree(finished, target, symlinks=True); change(target); return target
    def damaged(run):
        label = next((run / "relabel" / "labels").glob("*.safetensors"))
        label.write_bytes(label.read_bytes()[: label.stat().st_size // 2])
    def empty_manifest(run): (run / "relabel" / "manifest.json").write_text("")
    def curly_manifest(run): shutil.rmtree(run / "relabel"); (run / "recover" / "manifest.json").write_text("{}")
    def checkpoint(name, change):
        build = dict(name="convnet-d3-w64", num_classes=10, in_channels=1, resolution=16)
        state = {k: change(v) for k, v in create_model(**build).state_dict().items()}
        torch.save(state, tmp_path / f"{name}.pth"); return tmp_path / f"{name}.pth"
    def official(extra=None):
        target = tmp_path / ("stray_labels" if extra else "official") / "epoch_0"
        target.mkdir(parents=True)
        torch.save([torch.zeros(2, 4)], target / "batch_0.tar")
        if extra: (target / extra).write_text("not a batch")
        return target.parent
    def five():
        build = dict(name="convnet-d3-w64", num_classes=5, in_channels=1, resolution=16)
        save_model(create_model(**build), tmp_path / "five.safetensors", build); return tmp_path / "five.safetensors"
    def truncated():
        target = tmp_path / "truncated.safetensors"
        target.write_bytes((finished / "squeeze" / "teacher.safetensors").read_bytes()[:1000]); return target
    def link_loop():
        (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b"); (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
        return tmp_path / "loop_a"
    def a_file(): (tmp_path / "a_file").write_bytes(b"just a file"); return tmp_path / "a_file"
    def config_folder(): (tmp_path / "cfg_run" / "config.json").mkdir(parents=True); return tmp_path / "cfg_run"
    first = lambda folder: sorted(folder.rglob("*.png"))[0]
    return {
        "{run}": lambda: run_with(lambda r: None), "{recovered}": lambda: copy("squeeze", "recover"),
        "{squeezed}": lambda: copy("squeeze"), "{damaged}": lambda: run_with(damaged),
        "{empty_manifest}": lambda: run_with(empty_manifest), "{curly_manifest}": lambda: run_with(curly_manifest),
        "{official}": official, "{stray_labels}": lambda: official("batch_x.tar"),
        "{empty}": lambda: (tmp_path / "empty").mkdir() or tmp_path / "empty", "{tmp}": lambda: tmp_path / "scratch",
        "{five}": five, "{truncated}": truncated,
        "{pickled}": lambda: torch.save(torch.nn.Conv2d(1, 1, 1), tmp_path / "pickled.pth") or tmp_path / "pickled.pth",
        "{random}": lambda: (tmp_path / "random.pth").write_bytes(bytes(range(256)) * 4) and tmp_path / "random.pth",
        "{int8}": lambda: checkpoint("int8", lambda v: v.to(torch.int8) if v.is_floating_point() else v),
        "{bool}": lambda: checkpoint("bool", lambda v: v > 0 if v.is_floating_point() else v),
        "{corrupt_folder}": lambda: _shape_folder(tmp_path, "corrupt", lambda f: sorted(f.rglob("*.JPEG"))[2].write_bytes(b"garbage")),
        "{empty_class_folder}": lambda: _shape_folder(tmp_path, "emptyclass", lambda f: [p.unlink() for p in (sorted((f / "train").iterdir())[1]).iterdir()]),
        "{mismatched_folder}": lambda: _shape_folder(tmp_path, "mismatch", lambda f: sorted((f / "val").iterdir())[1].rename(f / "val" / "n99999999")),
        "{zero_byte_images}": lambda: _images_folder(tmp_path, finished, "zero", lambda f: first(f).write_bytes(b"")),
        "{truncated_images}": lambda: _images_folder(tmp_path, finished, "trunc", lambda f: first(f).write_bytes(first(f).read_bytes()[:40])),
        "{resized_images}": lambda: _images_folder(tmp_path, finished, "resized", lambda f: write_image(sorted(f.rglob("*.png"))[3], torch.zeros(1, 8, 9, dtype=torch.uint8))),
        "{extra_class_images}": lambda: _images_folder(tmp_path, finished, "extra", lambda f: shutil.copytree(f / "new000", f / "new010") and
                                                       [p.rename(p.with_name(p.name.replace("class000", "class010"))) for p in (f / "new010").iterdir()]),
        "{stray_images}": lambda: _images_folder(tmp_path, finished, "stray", lambda f: (f / "new000" / "notes.txt").write_text("hi")),
        "{a_file}": a_file, "{a_file_sha}": lambda: sha256_file(a_file()), "{link_loop}": link_loop, "{config_folder}": config_folder,
    }


def _prepare(args, finished: Path, tmp_path: Path) -> list[str]:
    builders, made, out = _builders(finished, tmp_path), {}, []
    for a in args:
        for key, build in builders.items():
            if key in a:
                if key not in made: made[key] = build()
                a = a.replace(key, str(made[key]))
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
    assert "Traceback" not in err and "weights_only=False" not in err
    run_dir = Path(argv[argv.index("--run-dir") + 1]) if "--run-dir" in argv and argv[argv.index("--run-dir") + 1] else None
    if run_dir is not None and run_dir.is_dir():
        assert not list(run_dir.rglob("*.tmp")), "a temporary file was left behind"
        if stage is not None: assert read_manifest(run_dir / stage, verify=False) is None, f"{stage} was marked finished"


def test_the_table_has_a_case_for_every_class_of_mistake():
    assert len(CASES) >= 31 + 40


def test_disk_too_small_is_refused_before_anything_is_written(finished, tmp_path, monkeypatch, capsys):
    import sre2l.runs
    run = tmp_path / "run"
    shutil.copytree(finished, run, symlinks=True)
    shutil.rmtree(run / "relabel")
    monkeypatch.setattr(sre2l.runs, "free_space", lambda folder: (1000, 4096))
    assert main(["relabel", "--run-dir", str(run), *sets()]) == 2
    err = capsys.readouterr().err
    assert "needs about" in err and "has only 1.0 kB free" in err
    assert not (run / "relabel" / "labels").exists() or not list((run / "relabel" / "labels").iterdir())


def test_the_preflight_counts_whole_blocks(tmp_path, monkeypatch):
    "A hundred 10-byte files do not fit in 1,000 bytes of free space: each takes a whole block."
    import sre2l.runs
    from sre2l.core import Sre2lError
    from sre2l.runs import preflight
    monkeypatch.setattr(sre2l.runs, "free_space", lambda folder: (4096 * 50, 4096))
    preflight(tmp_path, 1000, files=1)
    with pytest.raises(Sre2lError, match=r"\(100 files\)"):
        preflight(tmp_path, 1000, files=100)


@pytest.mark.parametrize("stage", ["recover", "relabel", "validate"])
def test_a_full_disk_is_one_line_and_nothing_is_sealed(stage, finished, tmp_path, monkeypatch, capsys):
    import errno
    import sre2l.runs
    run = tmp_path / "run"
    shutil.copytree(finished, run, symlinks=True)
    shutil.rmtree(run / stage, ignore_errors=True)  # the fixture's run has squeeze, recover and relabel
    if stage == "recover": shutil.rmtree(run / "relabel")
    plain, writes = sre2l.runs.os.fsync, []
    def full(fd):  # the third file the stage writes finds the disk full
        writes.append(fd)
        if len(writes) >= 3: raise OSError(errno.ENOSPC, "No space left on device", str(run / stage / "x"))
        return plain(fd)
    monkeypatch.setattr(sre2l.runs.os, "fsync", full)
    assert main([stage, "--run-dir", str(run), *sets()]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "the disk is full: free some space" in err and "Traceback" not in err
    assert read_manifest(run / stage, verify=False) is None and not list(run.rglob("*.tmp"))


def test_a_read_only_file_system_is_one_line(tmp_path, monkeypatch, capsys):
    import errno
    import sre2l.runs
    def read_only(*args, **kwargs): raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ro"))
    monkeypatch.setattr(sre2l.runs.tempfile, "mkstemp", read_only)
    assert main(["squeeze", "--run-dir", str(tmp_path / "ro"), *sets()]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "the file system is read-only: choose a writable --run-dir" in err


@pytest.mark.parametrize("stop, code, said", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "stopped by SIGTERM")])
def test_ctrl_c_is_one_line_and_the_run_resumes(finished, tmp_path, stop, code, said):
    "Ctrl-C, or SIGTERM (kill, a batch scheduler's stop): one line, claims given back, nothing half-written, a rerun resumes."
    import os, signal, subprocess, sys, time
    env = {**os.environ, "SRE2L_NO_PROGRESS": "1"}
    shutil.copytree(finished / "squeeze", tmp_path / "run" / "squeeze")
    command = [sys.executable, "-m", "sre2l.cli", "recover", "--run-dir", str(tmp_path / "run"),
               *sets("recover.ipc=4", "recover.iterations=200", "recover.group_images=10")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=default_sigint)
    progress, deadline = tmp_path / "run" / "recover" / "progress.json", time.time() + 3600
    while not progress.exists() and time.time() < deadline: time.sleep(0.05)
    time.sleep(1.0)
    process.send_signal(getattr(signal, stop))
    _, err = process.communicate(timeout=3600)
    assert process.returncode == code and f"{said}; run the same command again" in err and "Traceback" not in err, err
    assert not list((tmp_path / "run").rglob("*.claim")) and not list((tmp_path / "run").rglob("*.tmp"))
    if stop == "SIGTERM": return  # the same stop as Ctrl-C from here on (KeyboardInterrupt): its resume is tested once
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    assert read_manifest(tmp_path / "run" / "recover") is not None


def test_resume_redoes_a_truncated_or_foreign_label_file(finished, tmp_path):
    from sre2l.runs import sha256_file
    clean = {p.name: sha256_file(p) for p in (finished / "relabel" / "labels").glob("*.safetensors")}
    run = tmp_path / "run"
    shutil.copytree(finished, run, symlinks=True)
    (run / "relabel" / "manifest.json").unlink()  # an unfinished relabel ...
    labels = sorted((run / "relabel" / "labels").glob("*.safetensors"))
    labels[0].write_bytes(labels[0].read_bytes()[:-100])  # ... with a truncated epoch file
    assert main(["relabel", "--run-dir", str(run), *sets()]) == 0
    assert {p.name: sha256_file(p) for p in (run / "relabel" / "labels").glob("*.safetensors")} == clean
    (run / "relabel" / "manifest.json").unlink()
    shutil.copy(labels[1], labels[0])  # epoch 1's file in epoch 0's place: whole, but not epoch 0
    assert main(["relabel", "--run-dir", str(run), *sets()]) == 0
    assert {p.name: sha256_file(p) for p in (run / "relabel" / "labels").glob("*.safetensors")} == clean


def test_resume_redoes_a_unit_with_a_zero_byte_image(finished, tmp_path):
    from sre2l.runs import sha256_file
    clean = _images(finished)
    run = tmp_path / "run"
    shutil.copytree(finished / "squeeze", run / "squeeze")
    shutil.copytree(finished / "recover", run / "recover")
    (run / "recover" / "manifest.json").unlink()
    next((run / "recover" / "images").rglob("*.png")).write_bytes(b"")
    assert main(["recover", "--run-dir", str(run), *sets()]) == 0
    assert _images(run) == clean


def test_a_damaged_manifest_of_the_stage_itself_is_redone(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished / "squeeze", run / "squeeze")
    (run / "squeeze" / "manifest.json").write_text("{")
    assert main(["squeeze", "--run-dir", str(run), *sets()]) == 0
    assert read_manifest(run / "squeeze") is not None and list((run / "squeeze").glob("manifest.json.damaged-*"))


def test_claims_of_another_host_expire_and_a_reused_pid_does_not_keep_one(tmp_path):
    import json, os, socket, time
    from sre2l.runs import claim
    item = tmp_path / "group_0_0.claim"
    item.write_text(json.dumps({"owner": "node-that-died:4242", "expires": time.time() + 600}))
    assert claim(item) is None  # a live lease of another host is respected
    item.write_text(json.dumps({"owner": "node-that-died:4242", "expires": time.time() - 1}))
    held = claim(item); assert held is not None; held.release()  # its lease ran out: taken over
    item.write_text(json.dumps({"owner": f"{socket.gethostname()}:{os.getppid()}", "expires": time.time() - 1}))
    held = claim(item); assert held is not None; held.release()  # a live pid, but no renewal: not its claim any more


def test_temporaries_in_the_run_folder_itself_are_swept(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished / "squeeze", run / "squeeze")
    dead = max(int(p) for p in __import__("os").listdir("/proc") if p.isdigit()) + 100000
    left = run / f".config.json.{dead}.abc123.tmp"
    left.write_text("{half")
    assert main(["recover", "--run-dir", str(run), *sets()]) == 0
    assert not left.exists()


def test_files_follow_the_users_umask(tmp_path):
    import os, stat
    from sre2l.runs import save_json
    import sre2l.runs
    old = sre2l.runs._UMASK
    try:
        for umask, mode in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
            sre2l.runs._UMASK = umask
            save_json(tmp_path / f"f{umask}.json", {})
            assert stat.S_IMODE(os.stat(tmp_path / f"f{umask}.json").st_mode) == mode
    finally: sre2l.runs._UMASK = old


def test_importing_into_a_finished_stage_says_nothing_was_imported(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run, symlinks=True)
    assert main(["import-images", str(finished / "recover" / "images"), "--run-dir", str(run), *sets()]) == 0
    out = capsys.readouterr().out
    assert "recover already complete" in out and "nothing imported" in out


def test_a_misspelt_notebook_parameter_stops_the_notebook(tmp_path):
    papermill = pytest.importorskip("papermill")
    from conftest import ROOT
    with pytest.raises(papermill.PapermillExecutionError) as error:
        papermill.execute_notebook(str(ROOT / "nbs" / "01_squeeze.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                   parameters=dict(run_dir=str(tmp_path / "run"), epochs=5, prune_ratoi=0.9),
                                   cwd=str(ROOT / "nbs"), progress_bar=False)
    assert error.value.ename == "ConfigError" and "prune_ratoi (did you mean prune_ratio" in error.value.evalue
    assert "epochs (did you mean" in error.value.evalue  # ambiguous: four sections have epochs
    assert not (tmp_path / "run" / "squeeze" / "manifest.json").exists()


def test_a_papermill_parameter_of_the_wrong_type_is_refused():
    from sre2l.core import notebook_overrides, ConfigError
    with pytest.raises(ConfigError, match="recover.ipc='ten' is not a whole number"):
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
    from sre2l.runs import sha256_file
    return {p.name: sha256_file(p) for p in sorted((run_dir / "recover" / "images").rglob("*.png"))}


def test_a_group_claimed_by_a_live_process_is_left_to_it(finished, tmp_path):
    import os, socket, subprocess
    from sre2l.runs import claim, release
    env = {**os.environ, "SRE2L_NO_PROGRESS": "1"}
    for name in ("clean", "shared"): shutil.copytree(finished / "squeeze", tmp_path / name / "squeeze")
    assert subprocess.run(_recover_cli(tmp_path / "clean"), env=env, capture_output=True).returncode == 0
    ticket = tmp_path / "shared" / "recover" / "claims" / "group_1_0.claim"
    assert claim(ticket)  # this (live) test process holds the group of IPC index 1
    result = subprocess.run(_recover_cli(tmp_path / "shared"), env=env, capture_output=True, text=True)
    assert result.returncode == 3 and '"units_left": 1' in result.stdout, result.stdout + result.stderr
    assert f"group_1_0 by {socket.gethostname()}:{os.getpid()} until" in result.stderr.splitlines()[-1]  # who holds it
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
    outputs = [p.communicate(timeout=3600) for p in both]
    # one may end while the other still holds a group: it names the group and its holder, and exits 3
    assert all(p.returncode == 0 or (p.returncode == 3 and "are held by other processes" in err)
               for p, (_, err) in zip(both, outputs)), outputs
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
    from sre2l.runs import sha256_file
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


def _claimed_by_hand(run, record: str):
    "A claim on recover's group of IPC index 1 written as another host would (or a damaged one)."
    ticket = run / "recover" / "claims" / "group_1_0.claim"
    ticket.parent.mkdir(parents=True, exist_ok=True); ticket.write_text(record)
    return ticket


def test_a_lease_beyond_any_the_kit_grants_counts_from_the_files_age(finished, tmp_path):
    import json, os, subprocess, time
    env = {**os.environ, "SRE2L_NO_PROGRESS": "1"}
    shutil.copytree(finished / "squeeze", tmp_path / "run" / "squeeze")
    ticket = _claimed_by_hand(tmp_path / "run", json.dumps({"owner": "fast-clock:4242", "expires": time.time() + 86400}))
    result = subprocess.run(_recover_cli(tmp_path / "run"), env=env, capture_output=True, text=True)
    assert result.returncode == 3, result.stdout + result.stderr  # fresh: its true age is below the lease; nothing can progress
    last = result.stderr.splitlines()[-1]
    assert "group_1_0 by fast-clock:4242 until" in last and "beyond any lease the kit grants" in result.stderr
    until = last.split(" until ")[1].split(";")[0].split(")")[0]
    assert abs(time.mktime(time.strptime(until, "%Y-%m-%d %H:%M:%S UTC")) - time.timezone - (time.time() + 300)) < 120  # not a day
    os.utime(ticket, (time.time() - 301,) * 2)  # its holder has not renewed it for longer than a lease
    assert subprocess.run(_recover_cli(tmp_path / "run"), env=env, capture_output=True).returncode == 0
    assert read_manifest(tmp_path / "run" / "recover") is not None


@pytest.mark.parametrize("record", ["", "{half", '{"owner": "other-host:1", "expires": "tomorrow"}', '{"owner": null}', "[1]"])
def test_a_damaged_claim_is_stale_with_a_warning_naming_it(record, finished, tmp_path):
    import os, subprocess
    shutil.copytree(finished / "squeeze", tmp_path / "run" / "squeeze")
    ticket = _claimed_by_hand(tmp_path / "run", record)
    result = subprocess.run(_recover_cli(tmp_path / "run"), env={**os.environ, "SRE2L_NO_PROGRESS": "1"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"claim {ticket} is damaged" in result.stderr and read_manifest(tmp_path / "run" / "recover") is not None


def test_status_of_a_killed_stage_says_stopped_and_how_to_resume(finished, tmp_path):
    import os, signal, subprocess, sys, time
    run = tmp_path / "run"
    shutil.copytree(finished / "squeeze", run / "squeeze")
    job = subprocess.Popen(_recover_cli(run, ["recover.iterations=100000"]), env={**os.environ, "SRE2L_NO_PROGRESS": "1"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=default_sigint)
    status = lambda: subprocess.run([sys.executable, "-m", "sre2l.cli", "status", str(run)], capture_output=True, text=True)
    try:
        for _ in range(600):  # until the stage reports (the import of torch and the teacher come first)
            if list((run / "recover" / "claims").glob("*.claim")) and (run / "recover" / "progress.json").exists(): break
            assert job.poll() is None; time.sleep(0.5)
        running = status()
        assert running.returncode == 0 and "recover" in running.stdout and " running: " in running.stdout, running.stdout
    finally:
        job.send_signal(signal.SIGKILL); job.wait()
    stopped = status()
    line = next(l for l in stopped.stdout.splitlines() if l.startswith("recover"))
    assert stopped.returncode == 0 and " stopped: " in line and " left" not in line, line  # no time left for a dead run
    assert f"resume: sre2l recover --run-dir {run}" in line and "last progress" in line


@pytest.mark.parametrize("what", ["missing", "file", "plain folder", "stage folder"])
def test_status_of_a_path_that_is_not_a_run_is_an_error(what, finished, tmp_path, capsys):
    path = {"missing": tmp_path / "nothing", "file": tmp_path / "a_file", "plain folder": tmp_path,
            "stage folder": finished / "squeeze"}[what]
    (tmp_path / "a_file").write_text("x")
    assert main(["status", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sre2l: error:") and err.count("\n") == 1 and str(path) in err


def _tree(folder) -> dict:
    "{relative path: sha256} of every file under a folder, hidden ones and temporaries included."
    from sre2l.runs import sha256_file
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_make_imagefolder_killed_and_rerun_equals_a_clean_run_file_by_file(tmp_path):
    import os, signal, subprocess, sys, time
    command = lambda folder: [sys.executable, "-m", "sre2l.cli", "make-imagefolder", str(folder), "--classes", "3",
                              "--train-per-class", "30", "--val-per-class", "5", "--workers", "1"]
    env = {**os.environ, "SRE2L_NO_PROGRESS": "1"}
    assert subprocess.run(command(tmp_path / "clean"), env=env, capture_output=True).returncode == 0
    job = subprocess.Popen(command(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           preexec_fn=default_sigint)
    while job.poll() is None and len(list((tmp_path / "killed").rglob("*.JPEG"))) < 20: time.sleep(0.05)
    job.send_signal(signal.SIGKILL); job.wait()
    dead = max(int(p) for p in os.listdir("/proc") if p.isdigit()) + 100000
    some_class = next((tmp_path / "killed" / "train").iterdir())
    (some_class / f".{some_class.name}_99.JPEG.{dead}.x1y2.tmp").write_bytes(b"\xff\xd8 half a JPEG")  # a dead writer's
    assert not (tmp_path / "killed" / "dataset.json").exists()  # killed before the end: not sealed
    assert subprocess.run(command(tmp_path / "killed"), env=env, capture_output=True).returncode == 0
    assert _tree(tmp_path / "killed") == _tree(tmp_path / "clean")


def test_status_of_another_hosts_stage_is_stopped_once_its_reports_are_older_than_a_lease(tmp_path):
    import time
    from sre2l.runs import LEASE_SECONDS, prepare_run, run_status, save_json
    run = prepare_run(tmp_path / "run", make_config("digits"))
    report = {"what": "recover groups", "done": 3, "total": 10, "host": "other-node", "pid": 42,
              "command": "sre2l recover --run-dir x"}
    save_json(run / "recover" / "progress.json", {**report, "updated": time.time() - 10})
    assert run_status(run)[0]["state"] == "running"  # a recent report: it may well run there
    save_json(run / "recover" / "progress.json", {**report, "updated": time.time() - LEASE_SECONDS - 1})
    assert run_status(run)[0]["state"] == "stopped"  # silent for longer than a lease, and no claim held


def test_a_folder_one_level_above_a_run_is_named_as_the_cause(finished, tmp_path, capsys):
    shutil.copytree(finished, tmp_path / "runs" / "mine", symlinks=True)
    assert main(["validate", "--run-dir", str(tmp_path / "runs"), *sets()]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pass --run-dir {tmp_path / 'runs' / 'mine'}" in err, err
    assert main(["status", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "it holds mine" in err and err.count("\n") == 1, err


def _paths(folder) -> dict:
    "{relative path: sha256, or 'folder'} of everything under a folder: files and folders, empty ones included."
    return {**{str(p.relative_to(folder)): "folder" for p in folder.rglob("*") if p.is_dir()}, **_tree(folder)}


def test_a_stage_folder_given_as_the_run_is_named_and_left_untouched(finished, tmp_path, capsys):
    """Aimed one level too low (a run's stage folder, or a table's shared stage folder), a stage, export-labels and status
    say which run to pass, and nothing is written there (a stage used to write config.json into it and start a run)."""
    run = tmp_path / "mine"
    shutil.copytree(finished, run, symlinks=True)
    before = _paths(run)
    for argv in (["validate", "--run-dir", str(run / "relabel"), *sets()], ["relabel", "--run-dir", str(run / "recover"), *sets()],
                 ["export-labels", "--run-dir", str(run / "relabel"), "--to", str(tmp_path / "out")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"not a run: pass --run-dir {run}" in err, err
    assert main(["status", str(run / "relabel")]) == 2
    assert f"it is part of {run}: give that" in capsys.readouterr().err
    assert _paths(run) == before and not (tmp_path / "out").exists()


def test_reproduce_aimed_at_a_table_folder_or_a_run_names_the_parent_and_writes_nothing(tmp_path, capsys):
    table = tmp_path / "tables" / "demo"
    (table / "stages").mkdir(parents=True); (table / "cells" / "cell").mkdir(parents=True)
    (table / "cells" / "cell" / "config.json").write_text("{}")
    before = _paths(tmp_path)
    for wrong in (table, table / "cells", table / "cells" / "cell"):
        for mode in ("--dry-run", "--render-only"):
            assert main(["reproduce", "demo", mode, "--run-dir", str(wrong), "--out", str(tmp_path / "figures")]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"pass --run-dir {tmp_path / 'tables'}" in err, err
    assert main(["reproduce", "demo", "--render-only", "--run-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "figures")]) == 2
    assert "nothing of demo has run under" in capsys.readouterr().err
    assert _paths(tmp_path) == before  # no table folder, no figures, no stage folders made by a render of nothing


def test_a_checkpoint_folder_is_named_as_a_folder_with_the_file_to_pass(finished, tmp_path, capsys):
    teacher = next(p for p in (finished / "squeeze").iterdir() if p.suffix == ".safetensors")
    assert main(["squeeze", "--run-dir", str(tmp_path / "run"), *sets(f"squeeze.checkpoint={finished / 'squeeze'}")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a folder, not a file" in err and f"pass {teacher}" in err, err


def test_make_imagefolder_refuses_a_folder_it_did_not_write(finished, tmp_path, capsys):
    "A run folder, or a class folder of a data set, is refused before anything is written into it."
    run = tmp_path / "mine"
    shutil.copytree(finished, run, symlinks=True)
    before = _paths(run)
    assert main(["make-imagefolder", str(run), "--classes", "2", "--train-per-class", "2", "--val-per-class", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json" in err and "pass a new or empty folder" in err, err
    assert _paths(run) == before
