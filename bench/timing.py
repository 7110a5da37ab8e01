"""What the benchmark scripts share: wall-clock timing that waits for the GPU, and a line naming the machine."""
import time

import torch


def timed(fn, device) -> float:
    "Seconds `fn()` takes, synchronising CUDA before and after."
    if device.type == "cuda": torch.cuda.synchronize()
    start = time.perf_counter(); fn()
    if device.type == "cuda": torch.cuda.synchronize()
    return time.perf_counter() - start


def machine(device) -> str:
    "The GPU's name, or the CPU thread count, and the torch version."
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return f"{where}, torch {torch.__version__}"


def print_table(title: str, unit: str, rows: list, work: float):
    "A Markdown table of (label, seconds) rows as `work / seconds` rates, with each row's ratio to the first."
    print(f"\n{title}\n")
    print(f"| path | {unit} | vs {rows[0][0].split()[0]} |\n|---|---|---|")
    reference_rate = work / rows[0][1]
    for label, seconds in rows:
        rate = work / seconds
        print(f"| {label} | {rate:,.0f} | {rate / reference_rate:.2f}x |")


def random_jpegs(folder, classes: int, ipc: int, size: int) -> list:
    "Write `ipc` random JPEG images per class in the official distilled layout under `folder`; their paths, sorted."
    import numpy as np
    from pathlib import Path
    from PIL import Image
    from sre2l.data import distilled_path
    rng = np.random.default_rng(0)
    for c in range(classes):
        for k in range(ipc):
            path = distilled_path(Path(folder), c, k); path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=75)
    return sorted(Path(folder).rglob("*.jpg"))


def loader_bench_setup(description: str, variants: dict):
    "Parse the options the relabel and validate benchmarks share; (args, device, variant values, workers, spec)."
    import argparse
    from sre2l.core import pick_device
    from sre2l.data import DatasetSpec, IMAGENET_MEAN, IMAGENET_STD
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=sorted(variants), default="cpu", help="shape (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per path (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers of path (a) (default: the variant's)")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda' (default: %(default)s)")
    args = parser.parse_args()
    classes, ipc, size, small, batch_size, workers = variants[args.variant]
    spec = DatasetSpec("bench", classes, size, 3, IMAGENET_MEAN, IMAGENET_STD)
    return args, pick_device(args.device), (classes, ipc, size, small, batch_size), \
        workers if args.workers is None else args.workers, spec
