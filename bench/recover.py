"""Recover throughput: image-iterations per second of three paths on the same teacher, in one run.

(a) reference: mirrors the official SRe2L loop: fp32, teacher parameters requiring grad, one work unit per
    batch, torchvision RandomResizedCrop/RandomHorizontalFlip on the 4-D batch then torch.roll, statistics
    from mean() and a permuted var(), a per-channel clip, and a host sync (loss.item()) every step;
(b) kit: sre2l.recover.recover_group with the default settings (frozen teacher, channels-last, one-pass
    statistics with a fused backward, all units grouped in one batch, noise drawn on the device, no per-step sync);
(c) kit with bf16 autocast and torch.compile (of MatchingLoss: teacher and statistics in one graph).

    python bench/recover.py --variant cpu            # small, for CI and laptops
    python bench/recover.py --variant resnet18-224   # ImageNet-1K shape: ResNet-18, 224 px, batch 100
    python bench/recover.py --variant tiny-64        # Tiny-ImageNet shape: 3x3-stem ResNet-18, 64 px

Teachers have random weights (the speed does not depend on them). Prints a Markdown table.
"""
import argparse
import math
import random

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as T

from timing import timed, machine, print_table
from sre2l.core import RecoverConfig, pick_device
from sre2l.data import DatasetSpec
from sre2l.models import create_model, bn_layers
from sre2l.recover import recover_group, work_units, MatchingLoss

VARIANTS = {  # model, classes, resolution, small_input, images per unit, units
    "cpu": ("resnet18", 10, 32, True, 10, 4),
    "resnet18-224": ("resnet18", 1000, 224, False, 100, 10),
    "tiny-64": ("resnet18", 200, 64, True, 100, 10),
}


def reference_recover(teacher, labels, spec, rc, iterations, device):
    "The official loop's shape, for comparison (see the module docstring)."
    teacher.requires_grad_(True)  # the official script never freezes the teacher's parameters
    stats = []
    def hook(module, inputs, output):
        x = inputs[0]; channels = x.shape[1]
        mean = x.mean([0, 2, 3]); var = x.permute(1, 0, 2, 3).contiguous().view([channels, -1]).var(1, unbiased=False)
        stats.append(torch.norm(module.running_var - var, 2) + torch.norm(module.running_mean - mean, 2))
    handles = [m.register_forward_hook(hook) for _, m in bn_layers(teacher)]
    x = torch.randn(len(labels), spec.channels, spec.resolution, spec.resolution, device=device, requires_grad=True)
    optimizer = torch.optim.Adam([x], lr=rc.lr, betas=(0.5, 0.9), eps=1e-8)
    crop = T.Compose([T.RandomResizedCrop(spec.resolution, scale=(0.08, 1.0)), T.RandomHorizontalFlip()])
    for step in range(iterations):
        optimizer.param_groups[0]["lr"] = 0.5 * (1 + math.cos(math.pi * step / iterations)) * rc.lr
        shifted = torch.roll(crop(x), shifts=(random.randint(0, rc.jitter), random.randint(0, rc.jitter)), dims=(2, 3))
        stats.clear()
        loss = F.cross_entropy(teacher(shifted), labels)
        loss = loss + rc.r_bn * (rc.first_bn_multiplier * stats[0] + sum(stats[1:]))
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        with torch.no_grad():
            for c in range(spec.channels):  # the official clip: one channel at a time
                x[:, c] = torch.clamp(x[:, c], -spec.mean[c] / spec.std[c], (1 - spec.mean[c]) / spec.std[c])
        loss.item()  # the official loop reads the loss every step
    for h in handles: h.remove()
    teacher.requires_grad_(False)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="cpu", help="model and shape (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="timed optimisation steps per path (default: 20 on the CPU variant, 100 on the GPU ones, "
                             "so that the per-group setup weighs as little as in a real run of 1000+ steps)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator) (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda' (default: %(default)s)")
    parser.add_argument("--no-compile", action="store_true", help="skip path (c), e.g. where no compiler is installed")
    args = parser.parse_args()
    device = pick_device(args.device)
    args.iterations = args.iterations or (20 if args.variant == "cpu" else 100)
    name, classes, resolution, small, per_unit, units = VARIANTS[args.variant]
    spec = DatasetSpec("bench", classes, resolution, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    teacher = create_model(name, classes, 3, resolution, small_input=small).to(device).eval().requires_grad_(False)
    group = work_units(classes, 1, per_unit)[:units]
    images = per_unit * units
    base = RecoverConfig(lr=0.25, r_bn=0.01, jitter=min(32, resolution // 8), group_images=images)
    rows = []

    def reference(iterations):
        for unit in group:
            reference_recover(teacher, torch.tensor(unit.classes, device=device), spec, base, iterations, device)
    reference(args.warmup)
    rows.append(("(a) reference: official loop shape, fp32", timed(lambda: reference(args.iterations), device)))

    kit_teacher = teacher.to(memory_format=torch.channels_last)
    def kit(rc, iterations, matching=None):
        rc.iterations = iterations
        recover_group(kit_teacher, group, spec, rc, 0, device, matching=matching)
    kit(RecoverConfig(**{**base.__dict__}), args.warmup)
    rows.append(("(b) kit default: grouped, frozen, channels-last, fp32",
                 timed(lambda: kit(RecoverConfig(**{**base.__dict__}), args.iterations), device)))
    if not args.no_compile:
        fast = dict(base.__dict__, precision="bf16")
        compiled = torch.compile(MatchingLoss(kit_teacher, base.first_bn_multiplier, "bf16"))
        kit(RecoverConfig(**fast), args.warmup, compiled)
        rows.append(("(c) kit + bf16 + torch.compile", timed(lambda: kit(RecoverConfig(**fast), args.iterations, compiled), device)))

    print_table(f"recover, {args.variant}: {name} at {resolution} px, {units} units x {per_unit} images, "
                f"{args.iterations} timed steps, {machine(device)}", "image-iterations/s", rows, images * args.iterations)


if __name__ == "__main__":
    main()
