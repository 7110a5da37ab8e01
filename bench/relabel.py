"""Relabel throughput: images per second of the official data path and the kit's replay path, in one run.

(a) reference: mirrors the official relabel script: a DataLoader with worker processes over JPEG files, PIL
    decode, per-image RandomResizedCrop and flip (torchvision transforms on PIL images), ToTensor, Normalize,
    CutMix on the batch, an fp32 teacher, fp16 logits saved with torch.save per batch;
(b) kit: the distilled set as one uint8 tensor on the device, plans drawn per epoch, one batched
    crop/flip resample and CutMix on the device (sre2l.replay.replay_batch), the teacher in channels-last,
    and one safetensors file per epoch (sre2l.replay.save_epoch);
(c) kit with the teacher under bf16 autocast.

    python bench/relabel.py --variant cpu            # small, for CI and laptops
    python bench/relabel.py --variant resnet18-224   # ImageNet shape: ResNet-18 at 224 px, batch 1024, 16 workers

With --mode region it measures FKD region labelling instead, crops per second over the training split of an
ImageNet-shaped folder (JPEGs of ImageNet's sizes, made in a temporary folder): (d) FKD's generator shape, a
DataLoader item that decodes one image and applies RandomResizedCrop + flip + ToTensor + Normalize in PIL
`num_crops` times, the teacher on `num_seg` crops at a time; (e) the kit's streamed path, worker processes
decoding the original images, crops drawn per image and resampled on the device, `num_seg` crops of several
images per teacher call (sre2l.regions.label_crops).

    python bench/relabel.py --mode region --variant cpu
    python bench/relabel.py --mode region --variant resnet18-224

The images are random JPEGs written to a temporary folder; the teacher has random weights.
"""
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from timing import timed, machine, print_table, random_jpegs, loader_bench_setup
from sre2l.core import RelabelConfig
from sre2l.data import IMAGENET_MEAN, IMAGENET_STD, read_distilled
from sre2l.models import create_model
from sre2l.replay import draw_epoch, replay_batch, save_epoch, epoch_file, cutmix_box

VARIANTS = {  # classes, images per class, resolution, small_input, batch size, workers
    "cpu": (10, 20, 32, True, 50, 2),
    "resnet18-224": (1000, 10, 224, False, 1024, 16),
}


class Folder(torch.utils.data.Dataset):
    "The official loader's shape: a JPEG decoded with PIL and augmented per image."
    def __init__(self, files, size):
        self.files = files
        self.transform = T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1)), T.RandomHorizontalFlip(), T.ToTensor(),
                                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    def __len__(self): return len(self.files)
    def __getitem__(self, i):
        with Image.open(self.files[i]) as im: return self.transform(im.convert("RGB"))


def reference(files, teacher, size, batch_size, workers, epochs, device, out):
    loader = torch.utils.data.DataLoader(Folder(files, size), batch_size=batch_size, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=False)
    rng = np.random.default_rng(0)
    for epoch in range(epochs):
        for b, x in enumerate(loader):
            x = x.to(device, non_blocking=True)
            lam = rng.beta(1.0, 1.0); r1, c1, r2, c2 = cutmix_box(size, lam, rng)
            partner = torch.randperm(len(x), device=device)
            x[:, :, r1:r2, c1:c2] = x[partner][:, :, r1:r2, c1:c2]
            with torch.no_grad(): logits = teacher(x).half().cpu()
            (out / f"epoch_{epoch}").mkdir(parents=True, exist_ok=True)
            torch.save([logits, partner.cpu(), lam, [r1, c1, r2, c2]], out / f"epoch_{epoch}" / f"batch_{b}.tar")


def kit(images, teacher, spec, rl, epochs, device, out, bf16=False):
    for epoch in range(epochs):
        plans = draw_epoch(len(images), epoch, rl, spec.resolution, 0)
        logits = []
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for plan in plans:
                x = replay_batch(images, plan, spec, spec.resolution).contiguous(memory_format=torch.channels_last)
                logits.append(teacher(x).float())
        save_epoch(epoch_file(out, epoch), plans, logits)


REGION_VARIANTS = {  # classes, training images per class, teacher input side, crops per image, crops per forward, workers
    "cpu": (8, 10, 64, 20, 10, 2),
    "resnet18-224": (50, 20, 224, 100, 50, 16),
}


class FKDItem(torch.utils.data.Dataset):
    "FKD's generator shape: one item = one decoded image, transformed num_crops times in PIL."
    def __init__(self, files, size, crops):
        self.files, self.crops = files, crops
        self.transform = T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1), interpolation=T.InterpolationMode.BICUBIC),
                                    T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    def __len__(self): return len(self.files)
    def __getitem__(self, i):
        with Image.open(self.files[i]) as im:
            im = im.convert("RGB")
            return torch.stack([self.transform(im) for _ in range(self.crops)])


def fkd_regions(files, teacher, size, crops, seg, workers, device):
    loader = torch.utils.data.DataLoader(FKDItem(files, size, crops), batch_size=1, num_workers=workers)
    with torch.no_grad():
        for x in loader:
            for part in x[0].split(seg): teacher(part.to(device)).softmax(1).topk(5, 1)


def kit_regions(split, teacher, rl, view, workers, device):
    import sre2l.regions as regions
    for (images, sizes), which in regions.originals(split, torch.arange(len(split)), max(1, 512 // rl.num_seg), workers):
        pools = [regions.draw_regions(int(i), h, w, rl, 0) for i, (h, w) in zip(which, sizes.tolist())]
        boxes, flips = torch.stack([b for b, _ in pools]), torch.stack([f for _, f in pools])
        regions.label_crops(teacher, images.to(device), sizes, boxes.to(device), flips.to(device), rl, view)


def region_main(args, device):
    from sre2l.data import load_split
    from sre2l.imagefolder import make_imagefolder
    classes, per_class, size, crops, seg, workers = REGION_VARIANTS[args.variant]
    workers = workers if args.workers is None else args.workers
    teacher = create_model("resnet18", 1000, 3, size).to(device).eval().requires_grad_(False)
    with tempfile.TemporaryDirectory() as folder:
        make_imagefolder(folder, classes, per_class, 1, workers=workers)
        split = load_split("imagenet-shape", "train", folder, num_classes=classes)
        rl = RelabelConfig(num_crops=crops, num_seg=seg, label_type="marginal_smoothing_k5")
        view = {"size": size, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        fkd_regions(split.paths[:2], teacher, size, crops, seg, 0, device)  # warm-up
        rows = [("(d) FKD's shape: an item per image, PIL transforms per crop", timed(
            lambda: fkd_regions(split.paths, teacher, size, crops, seg, workers, device), device))]
        kit_regions(split.subset(range(2)), teacher, rl, view, 0, device)
        rows.append(("(e) kit: originals decoded by workers, crops resampled on the device", timed(
            lambda: kit_regions(split, teacher, rl, view, workers, device), device)))
    print_table(f"region labels, {args.variant}: ResNet-18 teacher at {size} px, {len(split)} ImageNet-sized JPEGs, {crops} crops "
                f"each, {seg} per forward, {workers} workers, {machine(device)}", "crops/s", rows, len(split) * crops)


def main():
    if "--mode" in sys.argv and sys.argv[sys.argv.index("--mode") + 1] == "region":
        import argparse
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--mode", choices=["fkd-mix", "region"], default="fkd-mix")
        parser.add_argument("--variant", choices=sorted(REGION_VARIANTS), default="cpu")
        parser.add_argument("--workers", type=int, default=None)
        parser.add_argument("--device", default="auto")
        args = parser.parse_args()
        from sre2l.core import pick_device
        return region_main(args, pick_device(args.device))
    args, device, (classes, ipc, size, small, batch_size), workers, spec = loader_bench_setup(__doc__, VARIANTS)
    teacher = create_model("resnet18", classes, 3, size, small_input=small).to(device).eval().requires_grad_(False)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        files = random_jpegs(folder / "images", classes, ipc, size)
        n = len(files)
        reference(files[: batch_size], teacher, size, batch_size, workers, 1, device, folder / "warm-a")
        rows = [("(a) reference: workers + PIL + per-image crop, fp32", timed(
            lambda: reference(files, teacher, size, batch_size, workers, args.epochs, device, folder / "a"), device))]
        images = read_distilled(folder / "images").images.to(device)
        kit_teacher = teacher.to(memory_format=torch.channels_last)
        rl = RelabelConfig(epochs=args.epochs, batch_size=batch_size, mix="cutmix")
        kit(images, kit_teacher, spec, rl, 1, device, folder / "warm-b")
        rows.append(("(b) kit replay: device-resident, batched crops, fp32", timed(
            lambda: kit(images, kit_teacher, spec, rl, args.epochs, device, folder / "b"), device)))
        rows.append(("(c) kit replay, bf16 teacher", timed(
            lambda: kit(images, kit_teacher, spec, rl, args.epochs, device, folder / "c", bf16=True), device)))
    print_table(f"relabel, {args.variant}: ResNet-18 at {size} px, {n} images, batch {batch_size}, {args.epochs} epochs, "
                f"{workers} workers for (a), {machine(device)}", "images/s", rows, n * args.epochs)


if __name__ == "__main__":
    main()
