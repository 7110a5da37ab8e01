"""Where a recover step spends its time: the parts of one step timed alone, then a profiler table.

    python bench/recover_profile.py --variant resnet18-224

Parts: teacher forward + input gradient with no statistics (fp32, bf16, bf16 compiled, with and without
cudnn.benchmark), the same through MatchingLoss (teacher + BN statistics + losses), and the batched
crop/flip/roll resample (forward and backward). Prints milliseconds per step and image-iterations per second,
then the profiler's top kernels of three kit steps, fp32 and bf16 compiled.
"""
import argparse
import copy

import torch
import torch.nn.functional as F

from timing import timed, machine
from recover import VARIANTS
from sre2l.core import RecoverConfig, pick_device
from sre2l.data import DatasetSpec
from sre2l.models import create_model
from sre2l.recover import MatchingLoss, recover_group, work_units, draw_augmentation, stack_draws, augment_units, generator


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    name, classes, resolution, small, per_unit, units = VARIANTS[args.variant]
    images = per_unit * units
    teacher = create_model(name, classes, 3, resolution, small_input=small).to(device).eval().requires_grad_(False)
    teacher = teacher.to(memory_format=torch.channels_last)
    bare = torch.compile(copy.deepcopy(teacher))  # compiled without hooks
    x = torch.randn(images, 3, resolution, resolution, device=device).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    labels = torch.randint(classes, (images,), device=device)
    rows = []

    def measure(label, step):
        for _ in range(3): step()
        seconds = timed(lambda: [step() for _ in range(args.steps)], device) / args.steps
        rows.append((label, seconds))

    def forward_backward(model, bf16):
        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            x.grad = None; F.cross_entropy(logits.float(), labels).backward()
        return step

    def matching_step(matching):
        def step():
            ce, bn = matching(x, labels, units)
            x.grad = None; (ce + 0.01 * bn).sum().backward()
        return step

    for bench_mode in (False, True):
        torch.backends.cudnn.benchmark = bench_mode
        tag = " cudnn.benchmark" if bench_mode else ""
        measure(f"teacher fwd+bwd fp32{tag}", forward_backward(teacher, False))
        measure(f"teacher fwd+bwd bf16{tag}", forward_backward(teacher, True))
        measure(f"teacher fwd+bwd bf16 compiled{tag}", forward_backward(bare, True))
        measure(f"MatchingLoss fp32{tag}", matching_step(MatchingLoss(teacher)))
        measure(f"MatchingLoss bf16{tag}", matching_step(MatchingLoss(teacher, precision="bf16")))
        measure(f"MatchingLoss bf16 compiled{tag}", matching_step(torch.compile(MatchingLoss(teacher, precision="bf16"))))
    torch.backends.cudnn.benchmark = False
    rc = RecoverConfig(jitter=min(32, resolution // 8))
    gens = [generator(0, "p", u) for u in range(units)]
    draws = stack_draws([draw_augmentation(rc, resolution, resolution, g) for g in gens], device)
    def augment():
        out = augment_units(x, draws, per_unit); x.grad = None; out.sum().backward()
    measure("crop/flip/roll resample fwd+bwd", augment)

    print(f"\nrecover step parts, {args.variant}: {images} images at {resolution} px, {machine(device)}\n")
    print("| part | ms per step | image-iterations/s |\n|---|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds * 1e3:.1f} | {images / seconds:,.0f} |")

    group = work_units(classes, 1, per_unit)[:units]
    for precision, fwd in (("fp32", None), ("bf16", torch.compile(MatchingLoss(teacher, precision="bf16")))):
        rc = RecoverConfig(lr=0.25, r_bn=0.01, jitter=min(32, resolution // 8), group_images=images, iterations=3, precision=precision)
        recover_group(teacher, group, DatasetSpec("b", classes, resolution, 3, (0.5,) * 3, (0.25,) * 3), rc, 0, device, matching=fwd)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
            recover_group(teacher, group, DatasetSpec("b", classes, resolution, 3, (0.5,) * 3, (0.25,) * 3), rc, 0, device, matching=fwd)
        print(f"\nprofile of 3 kit steps, {precision}{' compiled' if fwd is not None else ''}:\n")
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=60))


if __name__ == "__main__":
    main()
