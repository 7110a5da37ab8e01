"""Does bf16 recovery lose accuracy? Students on images recovered in fp32 and in bf16, several seeds.

One teacher (squeeze once), then for every seed and precision: recover -> relabel -> validate.
Prints a Markdown table of student test top-1 (mean +- std over seeds) and the per-seed values.

    python bench/recover_quality.py --preset fashion-mnist --seeds 0 1 2 --run-dir runs/quality
"""
import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from sre2l.core import setup_logging
from sre2l.presets import make_config
from sre2l.runs import resolve_run_dir
from sre2l.squeeze import run_squeeze
from sre2l.recover import run_recover
from sre2l.relabel import run_relabel
from sre2l.validate import run_validate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="fashion-mnist", help="preset of every run (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run seeds (default: 0 1 2)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], help="recover precisions to compare")
    parser.add_argument("--run-dir", default="runs/quality", help="parent folder of the runs (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra settings for every run, as for sre2l --set")
    args = parser.parse_args()
    setup_logging()
    root = resolve_run_dir(args.run_dir)
    teacher_dir = root / "teacher"
    run_squeeze(make_config(args.preset, args.overrides), teacher_dir)
    results, start = {}, time.perf_counter()
    for precision in args.precisions:
        for seed in args.seeds:
            cfg = make_config(args.preset, [*args.overrides, f"seed={seed}", f"recover.precision={precision}"])
            run_dir = root / f"{precision}-seed{seed}"
            if not (run_dir / "squeeze").exists(): shutil.copytree(teacher_dir / "squeeze", run_dir / "squeeze")
            recover_seconds = run_recover(cfg, run_dir)["timings"]["seconds"]
            run_relabel(cfg, run_dir)
            top1 = run_validate(cfg, run_dir)["metrics"]["test_top1"]
            results.setdefault(precision, []).append((seed, top1, recover_seconds))
            print(f"[{time.perf_counter() - start:6.0f}s] {precision} seed {seed}: student top-1 {top1:.2f}% "
                  f"(recover {recover_seconds:.0f} s)", flush=True)
    teacher = json.loads((teacher_dir / "squeeze" / "metrics.json").read_text())["test_top1"]
    print(f"\n{args.preset}, teacher top-1 {teacher:.2f}%, IPC {make_config(args.preset, args.overrides).recover.ipc}\n")
    print("| recover precision | student top-1, mean +- std | per seed | recover seconds (mean) |\n|---|---|---|---|")
    for precision, rows in results.items():
        accs = [r[1] for r in rows]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {precision} | {statistics.mean(accs):.2f} +- {spread:.2f} | "
              f"{', '.join(f'{a:.2f}' for a in accs)} | {statistics.mean(r[2] for r in rows):.0f} |")


if __name__ == "__main__":
    main()
