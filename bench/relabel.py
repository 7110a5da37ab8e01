"""Relabel throughput: images per second of the official data path and the kit's replay path, in one run.

(a) reference: mirrors the official relabel script: a DataLoader with worker processes over JPEG files, PIL
    decode, per-image RandomResizedCrop and flip (torchvision transforms on PIL images), ToTensor, Normalize,
    CutMix on the batch, an fp32 teacher, fp16 logits saved with torch.save per batch;
(b) kit: the distilled set as one uint8 tensor on the device, plans drawn per epoch, one batched
    crop/flip resample and CutMix on the device (sre2l.relabel.replay_batch), the teacher in channels-last,
    and one safetensors file per epoch (sre2l.relabel.save_epoch);
(c) kit with the teacher under bf16 autocast.

    python bench/relabel.py --variant cpu            # small, for CI and laptops
    python bench/relabel.py --variant resnet18-224   # ImageNet shape: ResNet-18 at 224 px, batch 1024, 16 workers

The images are random JPEGs written to a temporary folder; the teacher has random weights.
"""
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
from sre2l.relabel import draw_epoch, replay_batch, save_epoch, epoch_file, cutmix_box

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


def main():
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
