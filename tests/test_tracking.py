"""Experiment tracking: per-epoch rows and recover's curves reach TensorBoard event files and wandb (offline)."""
import importlib.util

import pytest

from sre2l.core import Sre2lError
from sre2l.presets import make_config
from sre2l.runs import read_manifest
from sre2l.squeeze import run_squeeze
from sre2l.recover import run_recover
from sre2l.train import Tracker
from sre2l.validate import run_validate

TINY = ["squeeze.epochs=3", "recover.ipc=2", "recover.iterations=6", "recover.batch_size=4", "validate.labels=online",
        "validate.epochs=2", "validate.eval_every=1", "device=cpu"]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_gets_every_epoch_of_squeeze_and_validate_and_recovers_curve(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cfg = make_config("digits", TINY + ["tracker=tensorboard"])
    for stage in (run_squeeze, run_recover, run_validate): stage(cfg, tmp_path)
    def scalars(stage, name):
        events = EventAccumulator(str(tmp_path / "tensorboard" / stage)); events.Reload()
        return [(e.step, e.value) for e in events.Scalars(f"{stage}/{name}")]
    assert [s for s, _ in scalars("squeeze", "train_loss")] == [0, 1, 2]
    assert [s for s, _ in scalars("validate", "test_top1")] == [0, 1]
    assert [round(v, 4) for _, v in scalars("validate", "test_top1")][-1] == \
        round(read_manifest(tmp_path / "validate")["metrics"]["test_top1"], 4)
    curve = scalars("recover", "bn")
    assert [s for s, _ in curve] == list(range(6)) and curve[-1][1] < curve[0][1]  # BN matching goes down


def test_wandb_needs_its_key_from_the_environment_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False); monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(Sre2lError, match="WANDB_API_KEY"):
        run_squeeze(make_config("digits", TINY + ["tracker=wandb"]), tmp_path)
    assert not (tmp_path / "squeeze" / "teacher.safetensors").exists() and read_manifest(tmp_path / "squeeze") is None


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed")
def test_wandb_offline_records_the_rows(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline"); monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = Tracker("wandb", tmp_path, "validate", {"seed": 0})
    for epoch, loss in enumerate([2.0, 1.5]): tracker.log({"epoch": epoch, "train_loss": loss}, epoch)
    tracker.close()
    [record] = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert b"validate/train_loss" in record.read_bytes()
