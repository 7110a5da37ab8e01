"""Validate: resuming from a checkpoint, the losses on real stores, gradient accumulation."""
import shutil

import pytest
import torch

from sre2l.core import hash_json, stage_config
from sre2l.presets import make_config
from sre2l.data import get_dataset, read_distilled
from sre2l.models import create_model
from sre2l.squeeze import run_squeeze
from sre2l.recover import run_recover
from sre2l.relabel import run_relabel
from sre2l import validate
from sre2l.validate import train_student, pool_schedule, run_validate

BASE = ["squeeze.epochs=2", "recover.ipc=3", "recover.iterations=8", "recover.batch_size=4",
        "relabel.epochs=4", "relabel.batch_size=8", "validate.epochs=4", "device=cpu"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    cfg = make_config("digits", BASE)
    run_dir = tmp_path_factory.mktemp("store")
    for stage in (run_squeeze, run_recover, run_relabel): stage(cfg, run_dir)
    return run_dir


def train(store, cfg, checkpoint=None, student=None, test=None):
    "Train a student on the module's store through the same batch source `run_validate` uses (evaluated on `test`)."
    spec, device = get_dataset("digits"), torch.device("cpu")
    torch.manual_seed(0)
    student = student or create_model("convnet-d3-w64", 10, 1, spec.resolution)
    batches, _, _ = validate.batch_source(cfg, store, spec, device)
    history = train_student(student, batches, cfg.validate, device, spec, test, checkpoint,
                            hash_json(stage_config(cfg, "validate")))
    return student, history


def test_resume_from_any_checkpoint_matches_the_uninterrupted_run(store, tmp_path, monkeypatch):
    cfg = make_config("digits", BASE + ["validate.checkpoint_every=1"])
    reference, reference_history = train(store, cfg)
    save = validate.save_training_state
    for stop_after in (1, 2, 3):  # kill right after the checkpoint of epoch `stop_after` is written
        checkpoint = tmp_path / f"stop{stop_after}" / "checkpoint.pt"
        def save_then_die(path, key, epochs_done, *args, stop_after=stop_after):
            save(path, key, epochs_done, *args)
            if epochs_done == stop_after: raise KeyboardInterrupt
        monkeypatch.setattr(validate, "save_training_state", save_then_die)
        with pytest.raises(KeyboardInterrupt): train(store, cfg, checkpoint)
        monkeypatch.setattr(validate, "save_training_state", save)
        resumed, history = train(store, cfg, checkpoint)
        assert [r["epoch"] for r in history] == [0, 1, 2, 3]
        assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), resumed.state_dict().values()))
        assert [r["train_loss"] for r in history] == [r["train_loss"] for r in reference_history]


def test_the_weight_ema_is_what_is_tested_and_is_resumed_with_the_checkpoint(store, tmp_path, monkeypatch):
    "EDC's EMA changes the test numbers, not the training; a run killed after a checkpoint resumes to the same numbers."
    from sre2l.data import open_split
    from sre2l.train import to_device
    test = to_device(open_split(make_config("digits").data, "test"), torch.device("cpu"))
    sets = BASE + ["validate.checkpoint_every=1", "validate.eval_every=1"]
    cfg = make_config("digits", sets + ["validate.ema_decay=0.9"])
    _, reference = train(store, cfg, test=test)
    _, live = train(store, make_config("digits", sets), test=test)
    assert [r["train_loss"] for r in reference] == [r["train_loss"] for r in live]  # the average never trains
    assert [r["test_loss"] for r in reference] != [r["test_loss"] for r in live]  # it is what gets tested
    save, checkpoint = validate.save_training_state, tmp_path / "checkpoint.pt"
    def save_then_die(path, key, epochs_done, *args):
        save(path, key, epochs_done, *args)
        if epochs_done == 2: raise KeyboardInterrupt
    monkeypatch.setattr(validate, "save_training_state", save_then_die)
    with pytest.raises(KeyboardInterrupt): train(store, cfg, checkpoint, test=test)
    monkeypatch.setattr(validate, "save_training_state", save)
    _, resumed = train(store, cfg, checkpoint, test=test)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(resumed) == strip(reference)


def test_checkpoint_of_another_configuration_is_not_resumed(store, tmp_path):
    cfg = make_config("digits", BASE + ["validate.checkpoint_every=1", "validate.epochs=2"])
    checkpoint = tmp_path / "checkpoint.pt"
    train(store, cfg, checkpoint)  # leaves the epoch-1 checkpoint
    other = make_config("digits", BASE + ["validate.checkpoint_every=1", "validate.epochs=2", "validate.lr=0.01"])
    _, history = train(store, other, checkpoint)
    assert [r["epoch"] for r in history] == [0, 1]  # started over


def test_finished_validate_leaves_no_checkpoint(store, tmp_path):
    cfg = make_config("digits", BASE + ["validate.checkpoint_every=1"])
    for stage in ("squeeze", "recover", "relabel"): shutil.copytree(store / stage, tmp_path / stage)
    run_validate(cfg, tmp_path)
    assert not (tmp_path / "validate" / "checkpoint.pt").exists()


def test_accumulation_gives_the_whole_batch_gradient_without_batchnorm(store):
    # a student without BatchNorm gets the same gradient from 1 or 4 micro-batches, so ends with the same weights
    def linear():
        torch.manual_seed(0); return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    one, _ = train(store, make_config("digits", BASE + ["validate.epochs=2"]), student=linear())
    four, _ = train(store, make_config("digits", BASE + ["validate.epochs=2", "validate.accumulation_steps=4"]), student=linear())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(one.state_dict().values(), four.state_dict().values()))
    three, _ = train(store, make_config("digits", BASE + ["validate.epochs=2", "validate.accumulation_steps=3"]), student=linear())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(one.state_dict().values(), three.state_dict().values()))


def test_mse_gt_trains_and_needs_full_logits(store, tmp_path):
    cfg = make_config("digits", BASE + ["validate.loss=mse_gt", "validate.epochs=2"])
    for stage in ("squeeze", "recover", "relabel"): shutil.copytree(store / stage, tmp_path / stage)
    metrics = run_validate(cfg, tmp_path)["metrics"]
    assert metrics["epochs"] == 2 and 0 <= metrics["test_top1"] <= 100
    with pytest.raises(Exception, match="mse_gt compares every raw logit"):  # refused before any work
        make_config("digits", BASE + ["validate.loss=mse_gt", "relabel.logits=topk", "relabel.topk=3"])


def test_bf16_channels_last_student_trains(store):
    cfg = make_config("digits", BASE + ["validate.epochs=1", "validate.precision=bf16", "validate.channels_last=true"])
    student, history = train(store, cfg)
    assert torch.isfinite(torch.tensor(history[0]["train_loss"]))
    with pytest.raises(Exception, match="validate.precision=.fp16. is not one of"):
        train(store, make_config("digits", BASE + ["validate.precision=fp16"]))


def test_ddp_on_two_cpu_ranks_equals_accumulation_on_one(store, tmp_path):
    import os, subprocess, sys
    from safetensors.torch import load_file
    overrides = BASE + ["validate.epochs=2", "validate.optimizer=sgd", "validate.lr=0.05"]  # SGD: sensitive to gradient scale
    for name in ("ddp", "single"):
        for stage in ("squeeze", "recover", "relabel"): shutil.copytree(store / stage, tmp_path / name / stage)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "sre2l.cli",
               "validate", "--preset", "digits", "--run-dir", str(tmp_path / "ddp"), *sum((["--set", o] for o in overrides), [])]
    result = subprocess.run(command, env={**os.environ, "SRE2L_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-2000:]
    run_validate(make_config("digits", overrides + ["validate.accumulation_steps=2"]), tmp_path / "single")
    ddp, single = (load_file(tmp_path / n / "validate" / "student.safetensors") for n in ("ddp", "single"))
    weights = [k for k in ddp if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert weights and all(torch.allclose(ddp[k], single[k], atol=1e-5) for k in weights)


def test_online_kd_needs_no_store_and_matches_stored_labels(store, tmp_path):
    "Online KD replays the plans relabel stored, and its teacher targets are the stored logits up to their fp16 rounding."
    from sre2l.models import load_teacher
    from sre2l.replay import draw_epoch, load_epoch, epoch_file, replay_batch
    overrides = BASE + ["validate.epochs=2"]
    for stage in ("squeeze", "recover"): shutil.copytree(store / stage, tmp_path / "online" / stage)
    online = run_validate(make_config("digits", overrides + ["validate.labels=online"]), tmp_path / "online")
    assert not (tmp_path / "online" / "relabel").exists() and "recover" in online["inputs"]
    assert online["metrics"]["epochs"] == 2
    # what the claim is about: the batches the online teacher labels, and the targets it gives them
    cfg, spec = make_config("digits", overrides), get_dataset("digits")
    images = read_distilled(store / "recover" / "images", 3, spec.channels, spec.num_classes).images
    teacher = load_teacher(store, cfg, "cpu")
    for epoch in range(2):
        drawn = draw_epoch(len(images), epoch, cfg.relabel, spec.resolution, cfg.seed)
        stored = load_epoch(epoch_file(store / "relabel" / "labels", epoch))
        assert len(drawn) == len(stored)
        for plan, (kept, logits) in zip(drawn, stored):
            for name in ("indices", "boxes", "flips", "mix_partner", "mix_box"):
                assert torch.equal(getattr(plan, name), getattr(kept, name)), name
            assert torch.tensor(plan.mix_lambda, dtype=torch.float32).item() == kept.mix_lambda  # stored as float32
            with torch.no_grad(): target = teacher(replay_batch(images, plan, spec, spec.resolution)).float()
            one_step = logits.float().abs() * 2.0 ** -10 + 1e-6  # one fp16 step at each logit's magnitude
            assert ((target - logits.float()).abs() <= one_step).all()
    with pytest.raises(Exception, match="validate.labels=.live. is not one of"):
        run_validate(make_config("digits", overrides + ["validate.labels=live"]), tmp_path / "other")


def test_sigkilled_validate_resumes_to_the_same_student(store, tmp_path):
    import os, signal, subprocess, sys, time
    from sre2l.runs import sha256_file, read_manifest
    overrides = BASE + ["validate.epochs=30", "validate.checkpoint_every=1", "validate.eval_every=30",
                        "validate.pool_granularity=batch", "validate.pool_metric=random"]  # 30 epochs from a 4-epoch store
    args = ["--preset", "digits", *sum((["--set", o] for o in overrides), [])]
    sre2l = [sys.executable, "-m", "sre2l.cli", "validate"]
    env = {**os.environ, "SRE2L_NO_PROGRESS": "1"}
    for name in ("clean", "killed"):
        for stage in ("squeeze", "recover", "relabel"): shutil.copytree(store / stage, tmp_path / name / stage)
    assert subprocess.run(sre2l + ["--run-dir", str(tmp_path / "clean"), *args], env=env, capture_output=True).returncode == 0
    process = subprocess.Popen(sre2l + ["--run-dir", str(tmp_path / "killed"), *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint, deadline = tmp_path / "killed" / "validate" / "checkpoint.pt", time.time() + 3600
    while time.time() < deadline and not checkpoint.exists(): time.sleep(0.01)
    time.sleep(0.3)  # a few more epochs, so that the kill lands mid-run at a point the test does not choose
    process.send_signal(signal.SIGKILL); process.wait()
    assert checkpoint.exists() and read_manifest(tmp_path / "killed" / "validate") is None
    done = torch.load(checkpoint, weights_only=True)["epochs_done"]
    assert 1 <= done < 30, done
    assert subprocess.run(sre2l + ["--run-dir", str(tmp_path / "killed"), *args], env=env, capture_output=True).returncode == 0
    student = lambda name: sha256_file(tmp_path / name / "validate" / "student.safetensors")
    assert student("killed") == student("clean")
