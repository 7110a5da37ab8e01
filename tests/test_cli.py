"""The sre2l command: help for every verb, one-line errors with exit code 2, the stages end to end."""
import json
import sys
import shutil

import pytest

from conftest import run, tool

TINY = ["--set", "squeeze.epochs=2", "--set", "recover.ipc=2", "--set", "recover.iterations=5",
        "--set", "relabel.epochs=2", "--set", "validate.epochs=2"]


@pytest.mark.parametrize("verb, own, others", [
    ("squeeze", ["squeeze.class_bn", "squeeze.epochs"], ["recover.r_bn", "validate.temperature"]),
    ("recover", ["recover.r_bn", "recover.ipc"], ["squeeze.class_bn", "relabel.mix"]),
    ("relabel", ["relabel.mix", "relabel.num_crops"], ["recover.r_bn", "validate.temperature"]),
    ("validate", ["validate.temperature", "validate.loss"], ["recover.r_bn", "relabel.mix"]),
    ("config", ["recover.r_bn", "relabel.mix", "validate.temperature", "squeeze.class_bn"], []),
    ("demo", ["recover.r_bn", "relabel.mix", "validate.temperature", "squeeze.class_bn"], [])])
def test_help_lists_the_keys_of_its_verb(verb, own, others):
    "A stage's --help lists its own keys (and data's and the top-level ones) with their meaning, not the other stages'."
    result = run([tool("sre2l"), verb, "--help"])
    assert result.returncode == 0
    for key in [*own, "data.root", "seed"]: assert key in result.stdout, key
    for key in others: assert key not in result.stdout, key
    if verb in ("recover", "config"): assert "weight of the BN-statistics loss" in result.stdout


def test_help_shows_the_values_of_the_preset_asked_for():
    result = run([tool("sre2l"), "recover", "--preset", "sre2l_in1k", "--help"])
    assert result.returncode == 0 and "values of the sre2l_in1k preset" in result.stdout
    assert "recover.iterations = 4000" in result.stdout and "recover.lr = 0.25" in result.stdout


def test_version_and_python_dash_m():
    import sre2l
    for command in ([tool("sre2l"), "--version"], [sys.executable, "-m", "sre2l", "--version"]):
        result = run(command)
        assert result.returncode == 0 and result.stdout.strip() == f"sre2l {sre2l.__version__}", result


def test_help_does_not_import_torch():
    "`sre2l --help` and `sre2l presets` start at once: torch is imported only by verbs that compute."
    code = "import sys; from sre2l.cli import main; main(['presets']); print('torch' in sys.modules)"
    result = run([sys.executable, "-c", code])
    assert result.returncode == 0 and result.stdout.strip().endswith("False"), result.stdout


@pytest.mark.parametrize("args, message", [
    (["config", "--set", "recover.lrr=1"], "unknown config key 'recover.lrr'; did you mean recover.lr"),
    (["config", "--preset", "nope"], "unknown preset 'nope'"),
    (["config", "--set", "recover.ipc=ten"], "recover.ipc='ten' is not a whole number"),
    (["config", "--set", "recover.ipc"], "--set expects key=value"),
    (["squeeze", "--set", "data.name=imagenet-1k", "--set", "data.root=/nonexistent"], "data set 'imagenet-1k' not found"),
    (["recover", "--run-dir", "{tmp}/empty"], "has no finished squeeze stage"),
    (["reproduce", "sre2l_mian", "--run-dir", "{tmp}/r"], "unknown table 'sre2l_mian'"),
    (["fetch", "sre2l_tiny_rn18_1k_ipc50", "--from", "{tmp}/missing.zip"], "missing.zip does not exist"),
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
    assert longer.returncode == 2 and "validate.epochs=3 but the label store has only 2 complete epochs" in longer.stderr


def test_python_dash_m_entry_point():
    result = run([sys.executable, "-m", "sre2l.cli", "presets"])
    assert result.returncode == 0 and "sre2l_in1k" in result.stdout


def test_torchrun_and_manual_shards_match_one_process(tmp_path):
    small = ["--set", "squeeze.epochs=2", "--set", "recover.ipc=4", "--set", "recover.iterations=4",
             "--set", "recover.batch_size=5", "--set", "recover.group_images=5", "--set", "device=cpu"]
    one = tmp_path / "one"
    assert run([tool("sre2l"), "squeeze", "--run-dir", one, *small]).returncode == 0
    assert run([tool("sre2l"), "recover", "--run-dir", one, *small]).returncode == 0
    for name in ("torchrun", "manual"):
        shutil.copytree(one / "squeeze", tmp_path / name / "squeeze")
    launched = run([tool("torchrun"), "--nproc-per-node", "2", "-m", "sre2l.cli", "recover",
                    "--run-dir", tmp_path / "torchrun", *small])
    assert launched.returncode == 0, launched.stderr[-2000:]
    first = run([tool("sre2l"), "recover", "--run-dir", tmp_path / "manual", *small, "--shard", "0/2"])
    assert first.returncode == 0 and '"units_left"' in first.stdout
    assert run([tool("sre2l"), "recover", "--run-dir", tmp_path / "manual", *small, "--shard", "1/2"]).returncode == 0
    bad = run([tool("sre2l"), "recover", "--run-dir", tmp_path / "manual", *small, "--shard", "2/2"])
    assert bad.returncode == 2 and "allowed: I/N with 0 <= I < N" in bad.stderr
    expected = json.loads((one / "recover" / "manifest.json").read_text())["artifacts"]
    assert json.loads((tmp_path / "manual" / "recover" / "manifest.json").read_text())["artifacts"] == expected
    # torchrun sets OMP_NUM_THREADS=1: CPU sums run in another order, so the loss curves (diagnostics) may differ
    # in their last digits; the images, truncated to uint8, are the same bytes
    launched_artifacts = json.loads((tmp_path / "torchrun" / "recover" / "manifest.json").read_text())["artifacts"]
    images = {k: v for k, v in expected.items() if k.startswith("images/")}
    assert len(images) == 40 and {k: v for k, v in launched_artifacts.items() if k.startswith("images/")} == images


def test_relabel_under_torchrun(tmp_path):
    small = ["--set", "squeeze.epochs=2", "--set", "recover.ipc=2", "--set", "recover.iterations=3",
             "--set", "relabel.epochs=3", "--set", "relabel.batch_size=8", "--set", "device=cpu"]
    for verb in ("squeeze", "recover"):
        assert run([tool("sre2l"), verb, "--run-dir", tmp_path, *small]).returncode == 0
    launched = run([tool("torchrun"), "--nproc-per-node", "2", "-m", "sre2l.cli", "relabel", "--run-dir", tmp_path, *small])
    assert launched.returncode == 0, launched.stderr[-2000:]
    manifest = json.loads((tmp_path / "relabel" / "manifest.json").read_text())
    assert manifest["stored_batches"] == 9 and not list((tmp_path / "relabel" / "labels").rglob("parts/*/*"))
    assert run([tool("sre2l"), "validate", "--run-dir", tmp_path, *small, "--set", "validate.epochs=3"]).returncode == 0
