"""RDED selection: real images per second of a loop shaped like RDED's official one and of the kit's, in one run.

(a) reference: shaped like LINs-lab/RDED synthesize/main.py and utils.py: per class a DataLoader over the class's
    `mipc` real images (PIL images, as ImageFolder gives them), `m` square RandomResizedCrops per image
    (torchvision, antialiased, on PIL) with ToTensor + Normalize, then one padded forward of all the images per
    candidate index (RDED batches by `mipc`), softmax cross-entropy, argmin per image, argsort, and `mix_images`'
    cell-by-cell interpolate loop;
(b) kit: the class's images as one uint8 tensor on the device, every candidate box drawn at once, one batched
    resample, padded forwards of up to 512 patches, `choose_patches` and `stitch` (sre2l.selection.select_class).

    python bench/selection.py                     # CPU: 28 px, 10 classes x 100 images, ConvNet (the Fashion-MNIST shape)
    python bench/selection.py --variant resnet18-224 --device cuda   # ImageNet shape: 224 px, 300 images x 5 crops, ResNet-18

The images are random; the observer has random weights (the work does not depend on them).
"""
import argparse
import sys

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from timing import timed, machine, print_table
from sre2l.models import create_model
from sre2l.selection import select_class

VARIANTS = {"cpu": dict(size=28, channels=1, classes=10, mipc=100, m=5, factor=2, ipc=10, model="convnet-d3-w64", small=True),
            "resnet18-224": dict(size=224, channels=3, classes=4, mipc=300, m=5, factor=2, ipc=10, model="resnet18", small=False)}


def reference(observer, images, label, v, device):
    "One class the way RDED's code runs it: PIL crops per image and candidate, a padded forward per candidate index."
    mean, std = [0.5] * v["channels"], [0.25] * v["channels"]
    crop = T.Compose([T.RandomResizedCrop(v["size"] // v["factor"], ratio=(1, 1), antialias=True), T.ToTensor(), T.Normalize(mean, std)])
    loader = torch.utils.data.DataLoader([Image.fromarray(i.squeeze(0).numpy() if v["channels"] == 1 else i.permute(1, 2, 0).numpy())
                                          for i in images], batch_size=len(images), collate_fn=lambda b: b)
    for batch in loader:
        patches = torch.stack([torch.stack([crop(img) for _ in range(v["m"])]) for img in batch]).to(device)  # [mipc, m, ...]
    s, size = patches.shape, v["size"]
    dist = []
    with torch.no_grad():
        for k in range(v["m"]):  # one padded forward per candidate index, batch mipc
            p = patches[:, k]
            pad = (size - p.shape[-1]) // 2
            logits = observer(F.pad(p, (pad, size - p.shape[-1] - pad, pad, size - p.shape[-1] - pad)))
            dist.append(-torch.log(F.softmax(logits, 1)[:, label]))
    dist = torch.stack(dist)
    index = torch.argmin(dist, 0)
    best = dist[index, torch.arange(s[0])]
    chosen = patches[torch.arange(s[0]), index][torch.argsort(best)[:v["ipc"] * v["factor"] ** 2]]
    q, n, out = size // v["factor"], v["ipc"], torch.zeros(v["ipc"], s[2], size, size, device=device)
    k = 0
    for i in range(v["factor"]):
        for j in range(v["factor"]):
            out[:, :, i * q:(i + 1) * q, j * q:(j + 1) * q] = F.interpolate(chosen[k * n:(k + 1) * n], size=(q, q)); k += 1
    return out


def kit(observer, images, label, v, device):
    "One class through the kit: uint8 on the device, batched boxes and resample, batched scoring."
    x = (images.to(device).float() / 255 - 0.5) / 0.25
    return select_class(observer, x, label, v["ipc"], v["factor"], v["m"], torch.Generator().manual_seed(label))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", choices=VARIANTS, default="cpu", help="the shape measured (default: cpu)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    args = p.parse_args(argv)
    v, device = VARIANTS[args.variant], torch.device(args.device)
    torch.manual_seed(0)
    observer = create_model(v["model"], v["classes"], v["channels"], v["size"], v["small"]).to(device).eval()
    data = [torch.randint(0, 256, (v["mipc"], v["channels"], v["size"], v["size"]), dtype=torch.uint8) for _ in range(v["classes"])]
    for fn in (reference, kit): fn(observer, data[0], 0, v, device)  # warm-up
    rows = [(f"{name} ({what})", timed(lambda: [fn(observer, data[c], c, v, device) for c in range(v["classes"])], device))
            for name, what, fn in (("reference", "RDED-shaped loop", reference), ("kit", "select_class", kit))]
    print(f"# bench/selection.py --variant {args.variant}: {machine(device)}; {v['classes']} classes x {v['mipc']} images x {v['m']} crops")
    print_table("RDED selection", "real images/s (each cropped m times)", rows, v["classes"] * v["mipc"])
    print(f"kit / reference: {rows[0][1] / rows[1][1]:.2f}x faster")


if __name__ == "__main__":
    sys.exit(main())
