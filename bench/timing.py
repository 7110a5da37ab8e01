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
