"""Timing helpers shared by the benchmarks: every figure is a ratio against a baseline timed in the same run."""

import platform
import time

import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device="cpu", repeat=7, warmup=2, number=1):
    "Median seconds of one call of `fn` over `repeat` timings of `number` calls, after `warmup` calls."
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        sync(device)
        times.append((time.perf_counter() - start) / number)
    return sorted(times)[len(times) // 2]


def kernel_time(fn, number=10):
    """Seconds of GPU work (kernels, copies, fills) one call of `fn` puts on the device, from torch.profiler's
    CUDA activity over `number` calls after a warm-up call: what the call costs the GPU, apart from the host's
    launch overhead and sync latency, which `timeit` includes (a GPU runs a training loop's transforms while
    the host queues the next ones)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(number):
            fn()
        torch.cuda.synchronize()
    busy_us = sum(e.time_range.elapsed_us() for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    return busy_us * 1e-6 / number


def machine(device="cpu"):
    "One line naming the hardware a figure was measured on."
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads "
        f"(torch {torch.__version__})"
    )


def markdown_table(header, rows):
    "A GitHub markdown table from a header tuple and row tuples."
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
