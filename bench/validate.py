"""Validate throughput: training images per second of the official trainer's data path and the kit's replay path.

All paths train the same student from the same label store (one run, same images, same stored batches):
(a) reference: mirrors the official SRe2L trainer: a DataLoader with worker processes over JPEG files, PIL
    decode, each image cropped with its stored box and flipped with its stored flag (torchvision functional
    ops on PIL images), ToTensor, Normalize; the batch's stored soft labels read from one file per batch
    (torch.load); CutMix replayed on the device; an fp32 student in the default memory format;
(b) kit: sre2l.validate.train_student with the default settings (the distilled set as one uint8 tensor on the
    device, one batched crop/flip resample per stored batch, one safetensors file per stored epoch), fp32;
(c) kit with bf16 autocast and channels-last.

    python bench/validate.py --variant cpu            # small, for CI and laptops
    python bench/validate.py --variant resnet18-224   # ImageNet shape: ResNet-18 at 224 px, batch 256, 16 workers

The images are random JPEGs in a temporary folder and the stored logits are random (the speed does not depend
on them). Prints a Markdown table.
"""
import tempfile
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image

from timing import timed, machine, print_table, random_jpegs, loader_bench_setup
from sre2l.core import RelabelConfig, ValidateConfig
from sre2l.data import IMAGENET_MEAN, IMAGENET_STD, read_distilled
from sre2l.models import create_model
from sre2l.replay import draw_epoch, save_epoch, epoch_file
from sre2l.validate import train_student, store_batches, kd_loss

VARIANTS = {  # classes, images per class, resolution, small_input, batch size, workers
    "cpu": (10, 20, 32, True, 50, 2),
    "resnet18-224": (1000, 10, 224, False, 256, 16),
}


class StoredCrops(torch.utils.data.Dataset):
    "The official trainer's dataset shape: item i of an epoch is a JPEG decoded with PIL, cropped and flipped as stored."
    def __init__(self, files, plans, size):
        self.files, self.size = files, size
        self.items = [(int(i), box.tolist(), bool(f)) for p in plans for i, box, f in zip(p.indices, p.boxes, p.flips)]
    def __len__(self): return len(self.items)
    def __getitem__(self, n):
        index, (top, left, height, width), flip = self.items[n]
        with Image.open(self.files[index]) as im:
            im = im.convert("RGB"); W, H = im.size
            im = TF.resized_crop(im, round(top * H), round(left * W), round(height * H), round(width * W), [self.size, self.size])
        x = TF.normalize(TF.to_tensor(TF.hflip(im) if flip else im), IMAGENET_MEAN, IMAGENET_STD)
        return x


def reference(files, student, plans_by_epoch, label_files, size, batch_size, workers, device, lr=1e-3, temperature=20.0):
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.01)
    student.train()
    for epoch, plans in enumerate(plans_by_epoch):
        loader = torch.utils.data.DataLoader(StoredCrops(files, plans, size), batch_size=batch_size, shuffle=False,
                                             num_workers=workers, pin_memory=device.type == "cuda")
        for b, x in enumerate(loader):
            plan = plans[b]
            logits = torch.load(label_files[epoch][b], weights_only=True).to(device, non_blocking=True)
            x = x.to(device, non_blocking=True)
            r1, c1, r2, c2 = plan.mix_box.tolist()
            partner = plan.mix_partner.to(device)
            x[:, :, r1:r2, c1:c2] = x[partner][:, :, r1:r2, c1:c2]
            loss = kd_loss(student(x), logits, temperature)
            optimizer.zero_grad(); loss.backward(); optimizer.step()


def main():
    args, device, (classes, ipc, size, small, batch_size), workers, spec = loader_bench_setup(__doc__, VARIANTS)
    rl = RelabelConfig(epochs=args.epochs, batch_size=batch_size, mix="cutmix")

    def student():
        torch.manual_seed(0)
        return create_model("resnet18", classes, 3, size, small_input=small).to(device)

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        files = random_jpegs(folder / "images", classes, ipc, size)
        n = len(files)
        plans = [draw_epoch(n, e, rl, size, 0) for e in range(args.epochs)]
        logits = [[torch.randn(len(p.indices), classes).half() for p in epoch] for epoch in plans]
        label_files = []
        for e in range(args.epochs):  # the same labels in both layouts: one file per batch, one per epoch
            save_epoch(epoch_file(folder / "store", e), plans[e], logits[e])
            (folder / "official" / f"epoch_{e}").mkdir(parents=True)
            label_files.append([folder / "official" / f"epoch_{e}" / f"batch_{b}.pt" for b in range(len(plans[e]))])
            for file, z in zip(label_files[e], logits[e]): torch.save(z, file)

        warm = [plans[0][:3]]
        reference(files, student(), warm, label_files, size, batch_size, workers, device)
        rows = [("(a) reference: workers + PIL + per-image crop, fp32", timed(
            lambda: reference(files, student(), plans, label_files, size, batch_size, workers, device), device))]

        distilled = read_distilled(folder / "images")
        images, classes_of = distilled.images.to(device), distilled.labels
        schedule = [[(e, b) for b in range(len(plans[e]))] for e in range(args.epochs)]
        def source(schedule): return store_batches(images, classes_of, folder / "store", schedule, spec, device)
        for label, options in [("(b) kit replay: device-resident, batched crops, fp32", {}),
                               ("(c) kit replay, bf16 + channels-last", {"precision": "bf16", "channels_last": True})]:
            train_student(student(), source([schedule[0][:3]]), ValidateConfig(epochs=1, **options), device, spec)
            vc = ValidateConfig(epochs=args.epochs, **options)
            rows.append((label, timed(lambda: train_student(student(), source(schedule), vc, device, spec), device)))
    print_table(f"validate, {args.variant}: ResNet-18 student at {size} px, {n} images, batch {batch_size}, {args.epochs} epochs, "
                f"{workers} workers for (a), {machine(device)}", "training images/s", rows, n * args.epochs)


if __name__ == "__main__":
    main()
