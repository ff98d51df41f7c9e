"""The Triton kernels against `x.clone()` of the same batch, on CUDA, timed with CUDA events.

One function per kernel, `bench_<kernel>(device)`, returns markdown rows `(name, time / clone)`; each ratio's
clone is timed in the same call, on the same batch. Spectrogram batches are float32 `[B, 1, 201, 401]`, as in the
GPU session that set the goals. Run on a GPU machine: `python -m benchmarks.gpu_kernels` (prints one table).
"""

import os
from contextlib import contextmanager

import torch

from .common import machine, markdown_table, timeit

SHAPE = (1, 201, 401)  # [C, F, T] of one clip's spectrogram
BATCHES = (64, 256)


def cuda_time(fn, device, repeat=50, warmup=5):
    "Median seconds of one call of `fn`: CUDA events around each call on CUDA, `common.timeit` elsewhere."
    if torch.device(device).type != "cuda":
        return timeit(fn, device, repeat=3, warmup=1)
    for _ in range(warmup):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeat)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) / 1e3 for start, end in events)
    return times[len(times) // 2]


@contextmanager
def triton_off():
    "The eager path of the same functions: SPECNORM_TRITON=0 (the kill switch)."
    before = os.environ.get("SPECNORM_TRITON")
    os.environ["SPECNORM_TRITON"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["SPECNORM_TRITON"]
        else:
            os.environ["SPECNORM_TRITON"] = before


# Launch settings to compare, (rows per program, frames per tile, warps): the modules' defaults come first.
TILES = ((16, 64, 8), (16, 64, 4), (32, 64, 8), (16, 128, 8), (8, 64, 4))


@contextmanager
def tiles(module, rows, chunk, warps):
    "Launch `module`'s kernel with these settings (its ROWS, CHUNK, NUM_WARPS) inside the block."
    before = module.ROWS, module.CHUNK, module.NUM_WARPS
    module.ROWS, module.CHUNK, module.NUM_WARPS = rows, chunk, warps
    try:
        yield
    finally:
        module.ROWS, module.CHUNK, module.NUM_WARPS = before


def kernel_rows(name, module, run, device, clone, settings):
    "One row per launch setting (on CUDA only: elsewhere the kernel does not run), then one for the eager path."
    rows = []
    for n_rows, chunk, warps in settings if torch.device(device).type == "cuda" else ():
        with tiles(module, n_rows, chunk, warps):
            ratio = cuda_time(run, device) / clone
        rows.append((f"{name}, kernel [{n_rows}, {chunk}] x {warps} warps", f"{ratio:.2f}x"))
    with triton_off():
        rows.append((f"{name}, eager (SPECNORM_TRITON=0)", f"{cuda_time(run, device) / clone:.2f}x"))
    return rows


def bench_pcen(device="cuda", batches=BATCHES, shape=SHAPE, settings=TILES):
    "`functional.pcen` (librosa's defaults): the one-pass kernel at each launch setting, and the eager path."
    from specnorm import kernel_pcen
    from specnorm.functional import pcen

    rows = []
    for n in batches:
        x = torch.rand(n, *shape, device=device)
        clone = cuda_time(x.clone, device)
        rows += kernel_rows(f"pcen, B={n}", kernel_pcen, lambda: pcen(x), device, clone, settings)
    return rows


def bench_sliding(device="cuda", batches=BATCHES, shape=SHAPE, window=300, settings=TILES):
    "`functional.sliding_norm` (centred window of 300 frames, means only and with variances) per clone."
    from specnorm import kernel_sliding
    from specnorm.functional import sliding_norm

    rows = []
    for n in batches:
        x = torch.randn(n, *shape, device=device) * 10 - 50  # dB-like values
        clone = cuda_time(x.clone, device)
        for norm_vars in (False, True):
            run = lambda: sliding_norm(x, window, norm_vars=norm_vars)
            name = f"sliding_norm({window}{', norm_vars' if norm_vars else ''}), B={n}"
            rows += kernel_rows(name, kernel_sliding, run, device, clone, settings)
    return rows


def main(device="cuda"):
    rows = [row for name, fn in sorted(globals().items()) if name.startswith("bench_") for row in fn(device)]
    print(f"### Triton kernels, {machine(device)}\n\n" + markdown_table(("", "time / clone"), rows))


if __name__ == "__main__":
    main("cuda" if torch.cuda.is_available() else "cpu")
