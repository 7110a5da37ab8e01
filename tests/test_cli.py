"""The sre2l command: help for every verb, one-line errors with exit code 2, the stages end to end."""
import json
import sys

import pytest

from conftest import run, tool

TINY = ["--set", "squeeze.epochs=2", "--set", "recover.ipc=2", "--set", "recover.iterations=5",
        "--set", "relabel.epochs=2", "--set", "validate.epochs=2"]


@pytest.mark.parametrize("verb", ["squeeze", "recover", "relabel", "validate", "demo", "config"])
def test_help_lists_every_key(verb):
    result = run([tool("sre2l"), verb, "--help"])
    assert result.returncode == 0
    for key in ["recover.r_bn", "relabel.mix", "validate.temperature", "squeeze.class_bn", "data.root"]:
        assert key in result.stdout
    assert "weight of the BN-statistics loss" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["config", "--set", "recover.lrr=1"], "unknown config key 'recover.lrr'; did you mean recover.lr"),
    (["config", "--preset", "nope"], "unknown preset 'nope'"),
    (["config", "--set", "recover.ipc=ten"], "recover.ipc='ten' is not a valid int"),
    (["config", "--set", "recover.ipc"], "--set expects key=value"),
    (["squeeze", "--set", "data.name=imagenet-1k", "--set", "data.root=/nonexistent"], "data set 'imagenet-1k' not found"),
    (["recover", "--run-dir", "{tmp}/empty"], "has no finished squeeze stage"),
    (["reproduce", "sre2l_main"], "not yet implemented"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = run([tool("sre2l"), *[a.replace("{tmp}", str(tmp_path)) for a in args]])
    assert result.returncode == 2, result.stderr
    errors = [l for l in result.stderr.splitlines() if l.startswith("sre2l: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_stages_end_to_end_and_refuse_a_changed_config(tmp_path):
    run_dir = tmp_path / "run"
    for verb in ["squeeze", "recover", "relabel", "validate"]:
        result = run([tool("sre2l"), verb, "--run-dir", run_dir, *TINY])
        assert result.returncode == 0, result.stderr
        assert (run_dir / verb / "manifest.json").is_file()
    metrics = json.loads((run_dir / "validate" / "metrics.json").read_text())
    assert 0 <= metrics["test_top1"] <= 100 and metrics["images"] == 20
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["recover"]["ipc"] == 2 and len(config["config_hash"]) == 16
    again = run([tool("sre2l"), "recover", "--run-dir", run_dir, *TINY])
    assert again.returncode == 0 and "already complete" in again.stderr
    changed = run([tool("sre2l"), "recover", "--run-dir", run_dir, *TINY, "--set", "recover.lr=0.5"])
    assert changed.returncode == 2 and "recover.lr: 0.1 in the folder, 0.5 now" in changed.stderr
    import shutil
    shutil.rmtree(run_dir / "validate")
    longer = run([tool("sre2l"), "validate", "--run-dir", tmp_path / "run", *TINY[:-2], "--set", "validate.epochs=3"])
    assert longer.returncode == 2 and "validate.epochs=3 but the label store has only 2 epochs" in longer.stderr


def test_python_dash_m_entry_point():
    result = run([sys.executable, "-m", "sre2l.cli", "presets"])
    assert result.returncode == 0 and "sre2l_in1k" in result.stdout
