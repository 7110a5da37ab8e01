"""The Fashion-MNIST table: random real subset vs SRe2L recover vs LPLD class-BN recover, full vs pruned labels.

For each IPC and seed: recover with the SRe2L and the LPLD presets, then sre2l.validate.pruning_curve relabels
and trains a student at every label budget (for the SRe2L run also on a random real subset of the same size,
labelled by the same teacher). One teacher per preset, trained once and shared by every seed. Pruned stores
keep the first (1 - r) of the stored batches (LPLD) and the student trains the full number of epochs from that
label pool (batch granularity, random draws). Every stage skips what is already complete, so a rerun resumes.

    python bench/fashion_table.py                                # IPC 10 and 50, 3 seeds, full/10x/40x
    python bench/fashion_table.py --ipc 10 --seeds 0 --run-dir runs/fashion-quick

Writes figures/NAME_table.md and .json (the table, per-seed values, the command) and figures/NAME_pruning.png
(accuracy against label budget); NAME is --name (default fashion_mnist).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from sre2l.core import make_config, setup_logging, resolve_run_dir, find_project_root, save_json
from sre2l.squeeze import run_squeeze
from sre2l.recover import run_recover
from sre2l.validate import pruning_curve, share_stage

METHODS = {  # table row: (preset, the pruning_curve image set it reads)
    "random real": ("fashion-mnist", "random real"),
    "SRe2L": ("fashion-mnist", "recovered"),
    "LPLD (class BN)": ("lpld_fashion-mnist", "recovered"),
}
BUDGETS = {"full": 0.0, "10x": 0.9, "40x": 0.975}  # LPLD's names: 40x keeps 1/40 of the stored batches


def run_seed(root, ipc, seed, overrides):
    "Every row of one IPC and seed: SRe2L images (with the random real baseline) and LPLD images, each at every budget."
    rows = []
    for method, preset, baseline in (("SRe2L", "fashion-mnist", True), ("LPLD (class BN)", "lpld_fashion-mnist", False)):
        cfg = make_config(preset, [*overrides, f"recover.ipc={ipc}", f"seed={seed}"])
        teacher = root / "teachers" / preset
        run_squeeze(cfg, teacher)
        run_dir = root / f"ipc{ipc}" / f"{preset}-seed{seed}"
        share_stage(teacher / "squeeze", run_dir / "squeeze")
        run_recover(cfg, run_dir)
        for point in pruning_curve(cfg, run_dir, tuple(BUDGETS.values()), baseline):
            budget = next(b for b, r in BUDGETS.items() if r == point["prune_ratio"])
            rows.append({"ipc": ipc, "seed": seed, "budget": budget, "top1": point["test_top1"],
                         "method": method if point["images"] == "recovered" else "random real",
                         "label_bytes": point["label_bytes"], "stored_batches": point["stored_batches"]})
    return rows


def render(results, args, teachers, seconds):
    lines = ["# Fashion-MNIST: distilled sets and label budgets", "",
             f"Measured by the kit on {args.machine}; command: `{args.command}` ({seconds / 60:.0f} min).",
             f"Student: {args.student}, {args.epochs} epochs; teachers ({args.teacher}, test top-1): "
             + ", ".join(f"{p} {t:.2f}%" for p, t in teachers.items()) + ".",
             "Test top-1 (%) on the 10,000 test images, mean +- std over seeds "
             f"{', '.join(map(str, args.seeds))}; label budget = stored label batches kept (LPLD pruning).", ""]
    budgets = list(BUDGETS)
    lines.append("| IPC | method | " + " | ".join(f"{b} labels" for b in budgets) + " |")
    lines.append("|---|---|" + "---|" * len(budgets))
    for ipc in args.ipc:
        for method in METHODS:
            cells = []
            for budget in budgets:
                values = [r["top1"] for r in results if (r["ipc"], r["method"], r["budget"]) == (ipc, method, budget)]
                spread = f" +- {statistics.stdev(values):.2f}" if len(values) > 1 else ""
                cells.append(f"{statistics.mean(values):.2f}{spread}" if values else "not run")
            lines.append(f"| {ipc} | {method} | " + " | ".join(cells) + " |")
    lines += ["", "Label storage per run (KiB, the safetensors label files of one store):", "",
              "| IPC | " + " | ".join(budgets) + " |", "|---|" + "---|" * len(budgets)]
    for ipc in args.ipc:
        sizes = [next((r["label_bytes"] / 1024 for r in results if (r["ipc"], r["budget"]) == (ipc, b)), None) for b in budgets]
        lines.append(f"| {ipc} | " + " | ".join("-" if s is None else f"{s:,.0f}" for s in sizes) + " |")
    return "\n".join(lines) + "\n"


def plot(results, args, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(args.ipc), figsize=(5 * len(args.ipc), 3.6), squeeze=False)
    for ax, ipc in zip(axes[0], args.ipc):
        for method in METHODS:
            xs, ys, errs = [], [], []
            for budget, ratio in BUDGETS.items():
                values = [r["top1"] for r in results if (r["ipc"], r["method"], r["budget"]) == (ipc, method, budget)]
                if values:
                    xs.append(1 / (1 - ratio)); ys.append(statistics.mean(values))
                    errs.append(statistics.stdev(values) if len(values) > 1 else 0)
            if xs: ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=method)
        ax.set_xscale("log"); ax.set_xticks([1, 10, 40]); ax.set_xticklabels(["1x", "10x", "40x"])
        ax.set_xlabel("label pruning (fewer stored labels ->)"); ax.set_ylabel("student test top-1 (%)")
        ax.set_title(f"Fashion-MNIST, IPC {ipc}"); ax.grid(alpha=0.3); ax.legend(fontsize=8)
    fig.tight_layout(); fig.savefig(path, dpi=120); plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ipc", type=int, nargs="+", default=[10, 50], help="images per class (default: 10 50)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run seeds (default: 0 1 2)")
    parser.add_argument("--run-dir", default="runs/fashion-table", help="parent folder of the runs (default: %(default)s)")
    parser.add_argument("--out", default="figures", help="where the table and figure go (default: %(default)s)")
    parser.add_argument("--name", default="fashion_mnist", help="file name stem of the outputs (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra settings for every run, as for sre2l --set")
    args = parser.parse_args()
    setup_logging()
    import torch
    args.command = "python " + " ".join(sys.argv)
    args.machine = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    base = make_config("fashion-mnist", args.overrides)
    args.epochs, args.student, args.teacher = base.validate.epochs, base.validate.model, base.squeeze.model
    root, out = resolve_run_dir(args.run_dir), (find_project_root() or Path.cwd()) / args.out
    results, start = [], time.perf_counter()
    for ipc in args.ipc:
        for seed in args.seeds:
            rows = run_seed(root, ipc, seed, args.overrides)
            results += rows
            for r in rows: print(f"[{time.perf_counter() - start:6.0f}s] IPC {ipc} {r['method']} seed {seed} {r['budget']}: {r['top1']:.2f}%", flush=True)
            teachers = {p: json.loads((root / "teachers" / p / "squeeze" / "metrics.json").read_text())["test_top1"]
                        for p in sorted({m[0] for m in METHODS.values()})}
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{args.name}_table.md").write_text(render(results, args, teachers, time.perf_counter() - start))
            save_json(out / f"{args.name}_table.json", {"command": args.command, "machine": args.machine, "teachers": teachers,
                                                        "student": args.student, "teacher": args.teacher, "results": results})
    plot(results, args, out / f"{args.name}_pruning.png")
    print((out / f"{args.name}_table.md").read_text())


if __name__ == "__main__":
    main()
