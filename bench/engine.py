"""What the engine costs beside the work: one digits stage called directly, then the same stage as engine jobs.

(a) direct: `run_validate(cfg, run_dir)` in this process (its inputs built first, not timed), and the same
    stage through the command line, `sre2l validate ...`, a fresh process that imports torch and the kit;
(b) engine: the same stage through `sre2l.jobs.run_jobs`, as `sre2l reproduce` runs it: its stage notebook
    executed by papermill in a kernel the driver started for it, the executed notebook saved. With --jobs K it
    runs K such jobs in a row (K seeds), as in a table.

It prints each job's wall time beside the stage's own time (`timings.total_seconds` of its manifest), the
overhead per job (wall minus stage) and the ratio of the engine's wall time to the direct call's.

    python bench/engine.py                 # validate, 3 jobs in a row
    python bench/engine.py --stage relabel

Runs on the CPU (digits); needs the `dev` extra (papermill, ipykernel), as the engine does.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from timing import machine
from sre2l.core import STAGES
from sre2l.jobs import find_stages, link_stages, run_jobs
from sre2l.plan import plan_table
from sre2l.tables import Cell, TableSpec

SMALL = ("squeeze.epochs=3", "recover.iterations=30", "relabel.epochs=40", "validate.epochs=40", "validate.eval_every=40")


def table(name: str, seeds) -> TableSpec:
    "A one-cell digits table at bench size."
    return TableSpec(name, name, [Cell("digits", "bench", "digits", SMALL, source="bench")], seeds=tuple(seeds))


def stage_seconds(run, stage: str) -> float:
    "The stage's own time, from its manifest."
    manifest = json.loads((run.folder / stage / "manifest.json").read_text())
    return manifest["timings"]["total_seconds"]


def main(stage: str, jobs: int):
    from importlib import import_module
    runner = getattr(import_module(f"sre2l.{stage}"), f"run_{stage}")
    before = STAGES[:STAGES.index(stage)]
    with tempfile.TemporaryDirectory(prefix="sre2l-bench-engine-") as tmp:
        tmp = Path(tmp)
        seeds = range(jobs)
        # inputs of every seed, built in this process and not timed
        inputs = TableSpec("inputs", "inputs", [Cell("digits", "bench", "digits", (*SMALL, "validate.epochs=1"),
                                                     source="bench")], seeds=tuple(seeds))
        for run in plan_table(inputs, tmp / "inputs"):
            link_stages(run)
            for earlier in before: getattr(import_module(f"sre2l.{earlier}"), f"run_{earlier}")(run.cfg, run.folder)
        # (a) direct
        built = find_stages([tmp / "inputs"])
        linked = lambda name, seeds: [link_stages(r, built) or r for r in plan_table(table(name, seeds), tmp / "runs")]
        direct_runs = linked("direct", [0])
        began = time.perf_counter(); runner(direct_runs[0].cfg, direct_runs[0].folder)
        direct_wall = time.perf_counter() - began
        direct_stage = stage_seconds(direct_runs[0], stage)
        cli_runs = linked("cli", [0])
        sets = [a for o in (*SMALL, "seed=0") for a in ("--set", o)]
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sre2l.cli", stage, "--preset", "digits", "--run-dir", str(cli_runs[0].folder),
                        *sets], check=True, capture_output=True)
        cli_wall = time.perf_counter() - began
        stage_seconds_cli = stage_seconds(cli_runs[0], stage)
        # (b) engine jobs, the earlier stages linked from the inputs
        engine_runs = linked("engine", seeds)
        assert all((r.folder / s / "manifest.json").exists() for r in engine_runs for s in before)
        began = time.perf_counter(); failed = run_jobs(engine_runs, None, 0, 0)
        engine_wall = time.perf_counter() - began
        assert not failed, failed
        engine_stage = [stage_seconds(r, stage) for r in engine_runs]
    overhead = (engine_wall - sum(engine_stage)) / jobs
    print(f"# bench/engine.py: {stage} on digits, {machine(torch.device('cpu'))}")
    print(f"(a) direct call: {direct_wall:.2f} s wall, stage {direct_stage:.2f} s")
    print(f"(a') the command line, a fresh process: {cli_wall:.2f} s wall, stage {stage_seconds_cli:.2f} s")
    print(f"(b) engine, {jobs} job(s) in a row: {engine_wall:.2f} s wall, stages {', '.join(f'{s:.2f}' for s in engine_stage)} s")
    print(f"overhead per job: {overhead:.2f} s (engine wall minus the stages' own times, over {jobs} job(s))")
    per_job = engine_wall / jobs
    print(f"engine wall per job minus the command line's: {per_job - cli_wall:.2f} s; minus the direct call's: "
          f"{per_job - direct_wall:.2f} s")
    print(f"engine wall per job / direct wall: {per_job / direct_wall:.2f}x; / command line wall: {per_job / cli_wall:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", default="validate", choices=["recover", "relabel", "validate"],
                        help="the stage to time (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=3, help="engine jobs in a row, one seed each (default: %(default)s)")
    args = parser.parse_args()
    main(args.stage, args.jobs)
