"""Determinism check: run squeeze, recover and relabel twice with the same configuration and compare the files.

Prints, per stage, whether the two runs wrote identical files (sha256) and, where they differ, how much
(relabel is compared on the same recovered images, so that it measures relabel alone):
the largest pixel difference of the recovered images and the largest difference of the stored logits.
On the CPU the files are expected to be identical; on a GPU, cuDNN's algorithm choices may differ in the
last bits, and this script measures by how much.

    python bench/determinism.py                          # digits, on the default device
    python bench/determinism.py --device cuda --set recover.precision=bf16
"""
import argparse
import tempfile
from pathlib import Path

import torch

from sre2l.core import setup_logging
from sre2l.presets import make_config
from sre2l.runs import read_manifest
from sre2l.data import read_distilled
from sre2l.replay import load_epoch, epoch_file
from sre2l.squeeze import run_squeeze
from sre2l.recover import run_recover
from sre2l.relabel import run_relabel


def run_twice(preset, overrides, folder):
    "Runs one and two share the teacher; run three also shares run one's images, so relabel is compared on equal inputs."
    cfg = make_config(preset, overrides)
    run_squeeze(cfg, folder / "shared")
    for name, shared in (("one", ["squeeze"]), ("two", ["squeeze"]), ("three", ["squeeze", "recover"])):
        (folder / name).mkdir()
        for stage in shared:
            source = folder / ("shared" if stage == "squeeze" else "one") / stage
            (folder / name / stage).symlink_to(source, target_is_directory=True)
        if name != "three": run_recover(cfg, folder / name)
        if name != "two": run_relabel(cfg, folder / name)
    return cfg


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="digits", help="preset (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda' (default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="extra settings")
    args = parser.parse_args()
    setup_logging()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        cfg = run_twice(args.preset, [f"device={args.device}", "relabel.epochs=5", "recover.iterations=100", *args.overrides], folder)
        print(f"\ndeterminism, {args.preset} on {args.device}, {torch.__version__}"
              f"{', ' + torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != 'cpu' else ''}\n")
        print("| stage | files | identical | largest difference |\n|---|---|---|---|")
        for stage in ("recover", "relabel"):
            pair = ("one", "two") if stage == "recover" else ("one", "three")
            one, two = (read_manifest(folder / n / stage)["artifacts"] for n in pair)
            same = sum(one[k]["sha256"] == two[k]["sha256"] for k in one)
            if stage == "recover":
                a, b = (read_distilled(folder / n / "recover" / "images").images.int() for n in ("one", "two"))
                diff = f"{(a - b).abs().max().item()} of 255 (pixel), {(a != b).float().mean().item():.2%} of pixels differ"
            else:
                worst = 0.0
                for e in range(cfg.relabel.epochs):
                    for (_, x), (_, y) in zip(*(load_epoch(epoch_file(folder / n / "relabel" / "labels", e)) for n in pair)):
                        worst = max(worst, (x.float() - y.float()).abs().max().item())
                diff = f"{worst:.3g} (stored logit)"
            print(f"| {stage} | {len(one)} | {same} | {diff} |")


if __name__ == "__main__":
    main()
