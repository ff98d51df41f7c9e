"""The Triton kernels against the eager paths they replace, on CUDA: time per call as a multiple of `x.clone()`.

One function per kernel family, `bench_<name>(device)`, returning markdown rows `(name, time / clone)`.
"""

import os
from unittest import mock

import torch

from specnorm.functional import CHANNEL_AXES, GLOBAL_AXES
from specnorm.stats import StatsRecorder

from .common import timeit


def bench_moments(device, smoke=False):
    """`StatsRecorder.update` (kernel_moments: 2 launches) vs its eager path and `torch.var_mean`, per clone.

    Rows name the CUDA kernels one update launches (torch.profiler), after a warm-up update."""
    from .bench_stats import cuda_kernels

    cuda = torch.device(device).type == "cuda"
    shapes = [(4, 1, 33, 51)] if smoke else [(64, 1, 201, 401)] + ([(256, 1, 201, 401)] if cuda else [])
    repeat = 3 if smoke else 15
    rows = []
    for shape in shapes:
        x = torch.randn(shape, device=device) * 20 - 50
        clone = timeit(lambda: x.clone(), device, repeat=repeat)
        for where, dims in (("global", GLOBAL_AXES), ("per frequency", CHANNEL_AXES)):
            base = timeit(lambda: torch.var_mean(x, dims, correction=0, keepdim=True), device, repeat=repeat)
            rows.append((f"`torch.var_mean` {list(shape)}, {where}", f"{base / clone:.2f}"))
            for path in ("triton", "eager") if cuda else ("eager",):
                rec = StatsRecorder(dims)
                if path == "eager":
                    with mock.patch.dict(os.environ, SPECNORM_TRITON="0"):  # the eager path, same call
                        rec.update(x)
                        t = timeit(lambda: rec.update(x), device, repeat=repeat)
                        n = cuda_kernels(lambda: rec.update(x)) if cuda else None
                else:
                    rec.update(x)
                    t = timeit(lambda: rec.update(x), device, repeat=repeat)
                    n = cuda_kernels(lambda: rec.update(x))
                kernels = f", {n} kernels" if n is not None else ""
                rows.append((f"`StatsRecorder.update` {list(shape)}, {where}, {path}{kernels}", f"{t / clone:.2f}"))
    return rows
