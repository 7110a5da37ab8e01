"""`sre2l reproduce`: table specs, the plan, the papermill driver (sharing, resuming, failures, GPUs, torchrun) and the report."""
import csv
import json
import re

import pytest
from pathlib import Path

from conftest import default_sigint, run, tool
from sre2l.core import STAGES
from sre2l.presets import make_config
from sre2l.plan import plan_table, predict_cost
from sre2l.reproduce import reproduce
from sre2l.tables import Cell, TableSpec, TABLES, get_table, list_tables, pruned, register_table

TINY = ("squeeze.epochs=2", "recover.ipc=2", "recover.iterations=10", "relabel.epochs=4", "validate.epochs=4",
        "validate.eval_every=4", "device=cpu")


def _table(name, cells):
    "Register a throw-away table (the driver process reads specs; the notebooks only see preset and overrides)."
    TABLES.pop(name, None)
    register_table(name)(lambda: TableSpec(name, f"test table {name}", cells))
    return name


def test_every_table_resolves_and_names_its_sources():
    for name in list_tables():
        spec = get_table(name)
        assert spec.cells and spec.title
        for cell in spec.cells:
            make_config(cell.preset, list(cell.overrides))
            assert cell.source, f"{name}: {cell.row} / {cell.column} does not say where its paper value comes from"
            if cell.paper is not None:  # a paper value names its paper (venue or arXiv id), never a path outside the repository
                assert re.search(r"NeurIPS|ECCV|ICLR|CVPR|TMLR|arXiv", cell.source) and "../" not in cell.source, cell.source


def test_paper_tables_carry_the_reference_numbers():
    main = {(c.row, c.column): c.paper for c in get_table("sre2l_main").cells}
    assert main["ImageNet-1K, IPC 50", "ResNet-18"] == 46.8 and main["Tiny-ImageNet, IPC 100", "ResNet-101"] == 51.5
    lpld = {(c.row, c.column): (c.paper, c.paper_label_gb) for c in get_table("lpld_labels").cells}
    assert lpld["ImageNet-1K, IPC 200", "LPLD: 40x fewer labels"] == (59.6, 2.85)
    assert make_config("lpld_in1k", list(get_table("lpld_labels").cells[1].overrides)).relabel.prune_ratio == 0.975


def test_pruning_curves_join_label_budgets_only():
    "DD-Ranking's hard-label and no-augmentation students share their images' row but are not points of its curve."
    from sre2l.report import pruning_lines
    for name, budgets in (("fashion_mnist", ["full labels", "10x labels", "40x labels"]),
                          ("fashion_mnist_ci", ["full labels", "40x labels"])):
        runs = plan_table(get_table(name))
        measured = [{"row": r.cell.row, "column": r.cell.column, "measured": 50.0} for r in runs if r.seed == 0]
        lines = pruning_lines(runs, measured)
        rows = {r.cell.row for r in runs if r.cell.column == "40x labels"}
        assert set(lines) == rows and len(rows) >= 3
        for points in lines.values():
            assert [e["column"] for _, e in points] == budgets
            assert [x for x, _ in points] == sorted({x for x, _ in points})


def test_dd_ranking_students_exist_and_match_dd_rankings_protocol():
    "Every ranking names cells of its table; the random and hard-label students differ only where DD-Ranking's do."
    for name in list_tables():
        spec = get_table(name)
        cells = {(c.row, c.column): make_config(c.preset, list(c.overrides)) for c in spec.cells}
        for ranking in spec.rankings:
            refs = lambda r: (r,) if isinstance(r[0], str) else r
            roles = [refs(ranking.cell), refs(ranking.random), refs(ranking.hard), refs(ranking.full),
                     *(refs(r) for r in ranking.no_aug)]
            for ref in (ref for role in roles for ref in role):
                assert ref in cells, f"{name}: a ranking of {ranking.cell} names a missing cell {ref}"
            distilled = cells[ranking.cell]
            for ref in refs(ranking.random):  # same labels protocol, real images
                assert cells[ref].recover.method == "real" and cells[ref].relabel == distilled.relabel
            for ref in refs(ranking.hard):
                assert cells[ref].validate.labels == "hard" and cells[ref].validate.loss == "ce"
            for ref in (ref for role in ranking.no_aug for ref in refs(role)):  # ARS: whole images, no flip, no mix
                rl = cells[ref].relabel
                assert (rl.crop_scale_min, rl.crop_scale_max, rl.flip, rl.mix) == (1.0, 1.0, False, "none")
    ci = get_table("fashion_mnist_ci").rankings[0]
    assert len(ci.random) == len(ci.hard) == 5  # DD-Ranking's learning-rate grid
    assert {make_config("fashion-mnist", list(c.overrides)).validate.lr for c in get_table("fashion_mnist_ci").cells
            if c.row.startswith("IPC 10, SRe2L, lr")} == {0.001, 0.005, 0.01, 0.05, 0.1}


def test_plan_shares_stages_with_equal_configuration(tmp_path):
    runs = plan_table(get_table("sre2l_main"), tmp_path)
    distinct = {stage: len({r.keys[stage] for r in runs if stage in r.keys}) for stage in STAGES}
    assert distinct == {"squeeze": 2, "recover": 6, "relabel": 4, "validate": 18}  # Tiny's students learn online: no store
    seeded = plan_table(get_table("sre2l_main"), tmp_path, seeds=(0, 1))
    assert len(seeded) == 36 and len({r.keys["recover"] for r in seeded}) == 12  # the seed changes recover, not squeeze
    assert len({r.keys["squeeze"] for r in seeded}) == 2


def test_predicted_label_bytes_match_the_lpld_storage_table():
    "The kit's fp16 store against LPLD's sizes (the official pickle layout): the same order, within 10%."
    for cell in get_table("lpld_labels").cells:
        if "ImageNet-1K" not in cell.row: continue
        predicted = predict_cost(make_config(cell.preset, list(cell.overrides)))["label_bytes"] / 1e9
        assert abs(predicted / cell.paper_label_gb - 1) < 0.1, (cell.row, cell.column, predicted, cell.paper_label_gb)


def test_dry_run_prints_the_full_plan(tmp_path):
    result = run([tool("sre2l"), "reproduce", "sre2l_main", "--dry-run", "--run-dir", str(tmp_path), "--rates", "h100"])
    assert result.returncode == 0, result.stderr
    assert "18 runs" in result.stdout and "on one H100 80 GB" in result.stdout and "imagenet-1k-ipc-200-resnet-101" in result.stdout
    assert not (tmp_path / "sre2l_main").exists()  # a dry run writes nothing


def test_unknown_table_is_one_clear_error(tmp_path):
    result = run([tool("sre2l"), "reproduce", "sre2l_mian", "--run-dir", str(tmp_path)])
    assert result.returncode == 2 and "unknown table 'sre2l_mian'" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def driven(tmp_path_factory):
    "A three-cell digits table run through the notebooks: full labels, 2x pruned, and a cell that must fail."
    root = tmp_path_factory.mktemp("reproduce")
    name = _table("t_driver", [Cell("digits", "full", "digits", TINY), Cell("digits", "2x", "digits", (*TINY, *pruned(2))),
                               Cell("digits", "broken", "digits", (*TINY, "validate.epochs=9"))])  # more epochs than stored
    report = reproduce(name, root / "runs", root / "figures")
    return root, name, report


def test_driver_runs_shares_and_reports(driven):
    root, name, report = driven
    cells = {c["column"]: c for c in report["cells"]}
    assert cells["full"]["measured"] is not None and cells["2x"]["measured"] is not None
    assert cells["2x"]["label_bytes"] < cells["full"]["label_bytes"]
    stages = sorted(p.name.split("-")[0] for p in (root / "runs" / name / "stages").iterdir())
    assert stages == ["recover", "relabel", "relabel", "squeeze", "validate", "validate", "validate"]  # shared ones once
    out = root / "figures" / name
    for file in (f"{name}.md", f"{name}.tex", f"{name}.csv", "results.json", "images.png", "storage.png"):
        assert (out / file).is_file(), file
    with open(out / f"{name}.csv") as f: assert [r["column"] for r in csv.DictReader(f)] == ["full", "2x", "broken"]
    executed = root / "runs" / name / "cells" / "digits-full-seed0" / "notebooks" / "04_validate.ipynb"
    assert json.loads(executed.read_text())["cells"], "the executed notebook is kept in the cell's folder"


def test_jobs_in_reused_kernels_make_the_files_one_process_makes(driven, tmp_path):
    """The driver keeps one kernel from job to job (its namespace reset between them); a stage must not depend on
    what ran before it in its process. The same table run in this pytest process (after whatever other tests ran
    here) writes every stage file byte for byte as the reused kernels did; only timed files (manifests, logs,
    progress) differ. The failing cell in between discarded its kernel, so both paths are covered."""
    import hashlib
    root, name, _ = driven
    reproduce(name, tmp_path / "runs", tmp_path / "figures", inline=True)
    def files(stages):
        timed = {"manifest.json", "log.txt", "progress.json"}
        return {str(p.relative_to(stages)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(stages.rglob("*")) if p.is_file() and p.name not in timed}
    engine, inline = files(root / "runs" / name / "stages"), files(tmp_path / "runs" / name / "stages")
    assert len(engine) > 20 and any(k.endswith("student.safetensors") for k in engine)
    assert engine == inline, sorted(k for k in engine.keys() | inline.keys() if engine.get(k) != inline.get(k))[:10]


def test_a_failed_cell_names_its_notebook_and_does_not_stop_the_others(driven):
    root, name, report = driven
    broken = next(c for c in report["cells"] if c["column"] == "broken")
    assert broken["measured"] is None
    why = broken["problems"][0]
    assert "validate failed" in why and "04_validate.ipynb" in why and "epochs" in why
    assert "failed (see below)" in (root / "figures" / name / f"{name}.md").read_text()


def test_second_run_resumes_without_running_anything(driven, caplog):
    root, name, first = driven
    caplog.set_level("INFO", logger="sre2l")
    again = reproduce(name, root / "runs", root / "figures")
    jobs = [r.message for r in caplog.records if "job(s)" in r.message]
    assert jobs == ["reproduce: 1 validate job(s) on 1 worker(s)"]  # only the broken cell is tried again
    assert [c["measured"] for c in again["cells"]] == [c["measured"] for c in first["cells"]]


def test_reuse_links_finished_stages_from_another_folder(driven, tmp_path, caplog):
    root, name, first = driven
    caplog.set_level("INFO", logger="sre2l")
    TABLES.pop("t_reuse", None)
    register_table("t_reuse")(lambda: TableSpec("t_reuse", "reuse", get_table(name).cells[:2]))
    report = reproduce("t_reuse", tmp_path / "runs", tmp_path / "figures", reuse=[root / "runs"])
    assert not [r for r in caplog.records if "job(s)" in r.message]
    assert [c["measured"] for c in report["cells"]] == [c["measured"] for c in first["cells"][:2]]


def test_one_process_per_gpu_and_torchrun_paths(tmp_path):
    "Two workers (CUDA_VISIBLE_DEVICES 0 and 1; on a CPU they only run side by side), then the CLI under torchrun."
    cells = [Cell("digits", f"seed-like {k}", "digits", (*TINY, f"validate.lr={0.001 * (k + 1)}")) for k in range(2)]
    report = reproduce(_table("t_gpus", cells), tmp_path / "a", tmp_path / "fa", gpus=["0", "1"])
    assert report["measured"] == 2 and not report["failed"]
    report = reproduce(_table("t_torchrun", cells[:1]), tmp_path / "b", tmp_path / "fb", torchrun=2)
    assert report["measured"] == 1 and not report["failed"]
    log = next((tmp_path / "b" / "t_torchrun" / "cells").glob("*/logs/validate.log")).read_text()
    assert "rank 0 of 2 processes" in log and "rank 1 of 2 processes" in log  # the stage ran under torchrun


# ---- paper scale: the ImageNet-shaped rehearsal, the cost model, several drivers, watching a run ----

def _rehearsal_runs(tmp_path):
    "The CI rehearsal's runs: the ones CI made before the tests (`sre2l reproduce imagenet_rehearsal_ci`), or new ones."
    from conftest import ROOT
    from sre2l.plan import finished
    made = plan_table(get_table("imagenet_rehearsal_ci"), ROOT / "runs" / "reproduce")
    if all(finished(r, s) is not None for r in made for s in STAGES): return made
    result = run([tool("sre2l"), "reproduce", "imagenet_rehearsal_ci", "--run-dir", tmp_path / "runs", "--out", tmp_path / "tables"],
                 timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    return plan_table(get_table("imagenet_rehearsal_ci"), tmp_path / "runs")


def test_the_ci_rehearsal_runs_end_to_end_and_the_dry_run_predicts_its_stages(tmp_path):
    """Predictions from this machine's calibrated rates against the rehearsal's measured stage times: within a factor of
    2 for every stage of 2 s or more (shorter ones are mostly fixed costs the model does not count) and in total."""
    from sre2l.runs import load_json
    from sre2l.plan import calibrate
    runs = _rehearsal_runs(tmp_path)
    rates, seen, measured_total, predicted_total = calibrate("cpu"), set(), 0.0, 0.0
    for r in runs:
        for stage in STAGES:
            if r.keys[stage] in seen: continue
            seen.add(r.keys[stage])
            measured = load_json(r.folder / stage / "manifest.json")["timings"]["total_seconds"]
            predicted = predict_cost(r.cfg, rates)["seconds"][stage]
            measured_total, predicted_total = measured_total + measured, predicted_total + predicted
            if measured >= 2: assert 0.5 <= measured / predicted <= 2, (stage, r.cell.name, measured, predicted)
    assert len(seen) == 16 and 0.5 <= measured_total / predicted_total <= 2, (measured_total, predicted_total)
    validate = load_json(runs[0].folder / "validate" / "manifest.json")
    assert validate["metrics"]["images"] == 8 and 0 <= validate["metrics"]["test_top1"] <= 100


def test_the_dry_run_predicts_small_models_from_their_measured_pairs(tmp_path):
    """fashion_mnist_ci (a ConvNet at 28 px, where MACs mislead): after `sre2l reproduce fashion_mnist_ci --calibrate`,
    the total is predicted within 1.5x and every stage of 3 s or more within 2x (below 3 s a stage is mostly set-up
    the model does not count: loading a teacher, a store; a single stage moves with whatever else the machine did
    while it ran, as the rehearsal's check allows); the same rates without the measured pairs
    (ResNet-18's rate scaled by MACs) predict less than half of the total."""
    import dataclasses, os
    from conftest import ROOT
    from sre2l.plan import finished, load_rates
    from sre2l.runs import load_json
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file():
        if os.environ.get("CI"): pytest.fail("CI must install dataset-fashion-mnist")
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    runs = plan_table(get_table("fashion_mnist_ci"), ROOT / "runs" / "reproduce")  # made by .ci/run before the tests
    if not all(finished(r, s) is not None for r in runs for s in r.keys):
        result = run([tool("sre2l"), "reproduce", "fashion_mnist_ci", "--run-dir", tmp_path / "runs", "--out", tmp_path / "t"], timeout=3600)
        assert result.returncode == 0, result.stderr[-3000:]
        runs = plan_table(get_table("fashion_mnist_ci"), tmp_path / "runs")
    result = run([tool("sre2l"), "reproduce", "fashion_mnist_ci", "--calibrate"], cwd=tmp_path)  # saves tmp_path/runs/rates.json
    assert result.returncode == 0, result.stderr[-3000:]
    rates = load_rates(str(tmp_path / "runs" / "rates.json"))
    assert any(key.startswith("convnet-d3-w64 28px") for key in rates.models) and rates.datasets["fashion-mnist"] > 0
    seen, totals = set(), {"measured": 0.0, "pairs": 0.0, "macs": 0.0}
    for r in runs:
        for stage, key in r.keys.items():
            if key in seen: continue
            seen.add(key)
            measured = load_json(r.folder / stage / "manifest.json")["timings"]["total_seconds"]
            predicted = predict_cost(r.cfg, rates)["seconds"][stage]
            totals["measured"] += measured; totals["pairs"] += predicted
            totals["macs"] += predict_cost(r.cfg, dataclasses.replace(rates, models={}))["seconds"][stage]
            if measured >= 3: assert 0.5 <= measured / predicted <= 2, (stage, r.cell.name, measured, predicted)
    assert 1 / 1.5 <= totals["measured"] / totals["pairs"] <= 1.5 and totals["macs"] < totals["measured"] / 2, totals


def test_the_dry_run_counts_decoding_and_names_its_machine(tmp_path):
    result = run([tool("sre2l"), "reproduce", "lpld_labels", "--dry-run", "--rates", "h100"])
    assert result.returncode == 0, result.stderr
    assert "rates: one H100 80 GB" in result.stdout and "decoding overlaps the compute" in result.stdout
    squeeze = next(l for l in result.stdout.splitlines() if l.startswith("squeeze") and "imagenet-1k" not in l)
    compute, decode = squeeze.split()[2:6:2]
    assert compute != decode  # both columns are there, computed apart
    cost = predict_cost(make_config("lpld_in1k"))
    assert cost["decode"]["squeeze"] > 60 and cost["seconds"]["squeeze"] == max(cost["compute"]["squeeze"], cost["decode"]["squeeze"])


def test_two_drivers_on_one_table_run_each_job_once(tmp_path):
    "The SLURM example, started twice on one folder without SLURM: the claims split the jobs, the table completes."
    import subprocess
    from conftest import ROOT
    shrink = ["--set", "squeeze.epochs=2", "--set", "recover.iterations=20", "--set", "relabel.epochs=10",
              "--set", "validate.epochs=10", "--set", "validate.eval_every=10", "--report-every", "1"]
    command = ["bash", str(ROOT / "examples" / "slurm" / "reproduce_array.sh"), "demo", str(tmp_path / "shared"), "", *shrink]
    env = {**__import__("os").environ, "SRE2L_NO_PROGRESS": "1", "PATH": f"{tool('sre2l').rsplit('/', 1)[0]}:{__import__('os').environ['PATH']}"}
    drivers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)]
    outputs = [d.communicate(timeout=3600)[0] for d in drivers]
    assert all(d.returncode == 0 for d in drivers), outputs
    done = [line for out in outputs for line in out.splitlines() if " done for " in line]
    assert len(done) == 11, done  # 1 squeeze, 2 recovers, 4 relabels, 4 students: each once, over both drivers
    assert all(any(" done for " in l for l in out.splitlines()) for out in outputs)  # both did work
    assert any("relabel epochs" in line or "validate epochs" in line for out in outputs for line in out.splitlines())
    report = json.loads((tmp_path / "shared" / "tables" / "demo" / "results.json").read_text())
    assert report["measured"] == 4 and not list((tmp_path / "shared").rglob("*.claim"))


def test_status_shows_finished_and_running_stages(tmp_path):
    from sre2l.runs import prepare_run, write_manifest, save_json
    import time
    cfg = make_config("digits")
    folder = prepare_run(tmp_path / "run", cfg)
    (folder / "squeeze").mkdir(); write_manifest(folder / "squeeze", "squeeze", cfg, [], timings={"total_seconds": 75})
    save_json(folder / "recover" / "progress.json", {"what": "recover groups", "done": 3, "total": 10, "rate_per_hour": 36.0,
                                                     "eta_seconds": 700, "host": "node7", "pid": 42, "updated": time.time() - 5})
    result = run([tool("sre2l"), "status", folder])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["squeeze", "finished", "in", "0:01:15"]
    assert re.search(r"running: recover groups 3/10, 36/h, about 0:11:[23]\d left; last progress \S+ \S+ UTC \(0:0\d:\d\d ago\) "
                     r"by node7:42", lines[1]), lines[1]  # another host's report, seconds old: running, 700 s counted down


def test_a_pruning_curve_runs_in_this_process_and_shares_the_runs_stages(tmp_path):
    "The lesson's curve is a table run inline: no notebook, the run's teacher and images linked by configuration hash."
    from sre2l.reproduce import pruning_curve
    from sre2l.squeeze import run_squeeze
    from sre2l.recover import run_recover
    cfg = make_config("digits", list(TINY))
    for stage in (run_squeeze, run_recover): stage(cfg, tmp_path / "run")
    report = pruning_curve("digits", TINY, ratios=(0.0, 0.75), baseline=False, run_dir=tmp_path / "curves",
                           reuse=[tmp_path / "run"])
    assert report["measured"] == 2 and not report["failed"]
    full, pruned_cell = report["cells"]
    assert pruned_cell["label_bytes"] < full["label_bytes"] and pruned_cell["column"] == "4x labels"
    for stage in ("squeeze", "recover"):  # linked, not run again
        shared = list((tmp_path / "curves" / report["table"] / "stages").glob(f"{stage}-*"))
        assert len(shared) == 1 and shared[0].resolve() == (tmp_path / "run" / stage).resolve()
    assert not list((tmp_path / "curves").rglob("notebooks"))  # in process: no notebook was executed


def test_ctrl_c_stops_the_driver_before_its_next_job(tmp_path):
    "SIGINT to the driver alone (as `kill -INT`): the running notebook is interrupted, no later job starts, claims go."
    import os, signal, subprocess, sys, time
    env = {**os.environ, "SRE2L_NO_PROGRESS": "1"}
    command = [sys.executable, "-m", "sre2l.cli", "reproduce", "demo", "--run-dir", str(tmp_path / "runs"),
               "--out", str(tmp_path / "tables")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, preexec_fn=default_sigint)  # its own group: the signal reaches the driver only
    log, deadline = tmp_path / "runs" / "demo" / "cells", time.time() + 3600
    # during the first of the two recover jobs: before the fix the driver went on to the second one
    while not list(log.glob("*/logs/recover.log")) and time.time() < deadline: time.sleep(0.1)
    time.sleep(2.0)
    started = set(log.glob("*/logs/*.log"))  # one job, or more on a machine fast enough to finish the first
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=3600)
    assert process.returncode == 130 and "interrupted; run the same command again" in err, err[-2000:]
    assert set(log.glob("*/logs/*.log")) == started and not list((tmp_path / "runs").rglob("*.claim"))
    left = [p for p in os.listdir("/proc") if p.isdigit() and str(tmp_path) in _cmdline(p) and "papermill" in _cmdline(p)]
    assert not left, "the interrupted notebook's papermill process outlived the driver"


def _cmdline(pid: str) -> str:
    try: return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError: return ""
