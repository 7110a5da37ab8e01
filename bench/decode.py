"""Decoding throughput: images per second of reading a validation split from disk, three ways, in one run.

(a) serial: the kit's plain path, `ImageSet.batch`: one file after the other in this process (decode,
    resize 256, centre crop 224), as every stage decoded files before the loader existed;
(b) loader: `sre2l.data.FileLoader`, DataLoader worker processes each decoding a whole batch with the same
    function, in the caller's order (`--workers`, default: the CPUs this process may use, at most 16);
(c) GPU decode (only on CUDA): the workers read bytes and `torchvision.io.decode_jpeg` decodes each batch on
    the GPU, where it is also resized and cropped (`data.decode=gpu`).

    python bench/decode.py                          # makes a 500-image ImageNet-shaped split in a temporary folder
    python bench/decode.py --root data/imagenet-shape-1000 --limit 10000   # the GPU rehearsal's folder

The ratio printed is (b) or (c) over (a), measured in this one run; every path decodes the same files and
the script checks that (a) and (b) give identical tensors.
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("SRE2L_NO_PROGRESS", "1")  # no bar while the folder is made
from timing import machine  # noqa: E402
from sre2l.core import pick_device
from sre2l.data import FileLoader, default_workers, load_split
from sre2l.imagefolder import make_imagefolder


def rate(fn, images: int, device) -> float:
    "Images per second of `fn()` (after a warm-up call), synchronising CUDA."
    fn()
    if device.type == "cuda": torch.cuda.synchronize()
    start = time.perf_counter(); fn()
    if device.type == "cuda": torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="", help="an imagenet-shape folder (default: make one in a temporary folder)")
    parser.add_argument("--classes", type=int, default=20, help="classes of the folder made here (default: %(default)s)")
    parser.add_argument("--val-per-class", type=int, default=25, help="its validation images per class (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=0, help="decode only the first N files of the split (0 = all)")
    parser.add_argument("--workers", type=int, default=-1, help="loader processes (default: the CPUs, at most 16)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per worker task (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="where (c) decodes: 'auto' or 'cuda' (default: %(default)s)")
    args = parser.parse_args()
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(args.root) if args.root else Path(folder)
        if not args.root: make_imagefolder(root, args.classes, 1, args.val_per_class)
        classes = len([p for p in (root / "val").iterdir() if p.is_dir()])
        split = load_split("imagenet-shape", "test", str(root), num_classes=classes)
        if args.limit: split = split.subset(range(min(args.limit, len(split))))
        workers = default_workers() if args.workers < 0 else args.workers
        n, order = len(split), torch.arange(len(split))
        loader = FileLoader(split, args.batch_size, workers)
        serial = lambda: [split.batch(order[s: s + args.batch_size]) for s in range(0, n, args.batch_size)]
        parallel = lambda: [x for x, _ in loader(order)]
        assert all(torch.equal(a, b) for a, b in zip(serial(), parallel())), "the loader must give the serial tensors"
        rows = [("(a) serial: one file after the other, in this process", rate(serial, n, device)),
                (f"(b) loader: {workers} worker processes", rate(parallel, n, device))]
        if device.type == "cuda":
            gpu = FileLoader(split, args.batch_size, workers, pin_memory=True, decode_device=device)
            rows.append((f"(c) loader, JPEGs decoded on the GPU ({workers} workers reading)", rate(lambda: [x for x, _ in gpu(order)], n, device)))
        print(f"\nDecoding {n} ImageNet-shaped JPEGs (resize 256, centre crop 224), {machine(device)}, "
              f"{default_workers()} usable CPUs\n")
        print("| path | images/s | vs (a) |\n|---|---|---|")
        for label, value in rows: print(f"| {label} | {value:,.0f} | {value / rows[0][1]:.2f}x |")


if __name__ == "__main__":
    main()
