"""Speed of the Triton kernels on CUDA against a memory copy (`x.clone()` of the batch), timed in the same call.

One function per kernel module, `bench_<name>(device)`, returning markdown rows `(name, time / clone)`; each
kernel row comes with the eager path it replaces (`SPECNORM_TRITON=0`) timed in the same run.
`python -m benchmarks.gpu_kernels` prints them all (CUDA only: on the CPU the kernels are not used).
"""

import os
import sys
from contextlib import contextmanager

import torch

from .common import machine, markdown_table, timeit

BATCHES = (64, 256)
SHAPE = (1, 201, 401)  # [C, F, T] of a spectrogram


@contextmanager
def triton_switch(value):
    "`SPECNORM_TRITON=value` inside the block: '0' the eager path (the kill switch), '1' every kernel."
    before = os.environ.get("SPECNORM_TRITON")
    os.environ["SPECNORM_TRITON"] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ["SPECNORM_TRITON"]
        else:
            os.environ["SPECNORM_TRITON"] = before


def _batch(b, device):
    gen = torch.Generator().manual_seed(0)
    level = torch.linspace(-90, -20, SHAPE[1]).reshape(1, 1, SHAPE[1], 1)
    return (level + 10 * torch.randn(b, *SHAPE, generator=gen)).to(device)


def _ratios(fns, device, repeat=50):
    "Each `(name, fn)` timed with triton on and off (kill switch), as a ratio to a clone timed alongside."
    rows = []
    for name, x, fn in fns:
        clone = timeit(lambda: x.clone(), device=device, repeat=repeat)
        for switch in ("1", "0"):
            with triton_switch(switch):
                t = timeit(fn, device=device, repeat=repeat)
            rows.append((f"{name}, {'triton' if switch == '1' else 'eager'}", f"{t / clone:.2f}x"))
    return rows


def bench_affine(device):
    "SpecNormalize (check_finite on): the fused checked affine (`kernel_affine.affine`) against the eager path."
    from specnorm.audio import AudioSpectrogram
    from specnorm.functional import CHANNEL_AXES, GLOBAL_AXES
    from specnorm.normalize import SpecNormalize

    fns = []
    for b in BATCHES:
        x = _batch(b, device)
        spec = AudioSpectrogram(x, sr=16000)
        for name, axes in (("global", GLOBAL_AXES), ("per frequency row", CHANNEL_AXES)):
            norm = SpecNormalize(x.mean(axes, keepdim=True).cpu(), x.std(axes, keepdim=True).cpu(), axes=axes)
            fns.append((f"SpecNormalize {name}, B={b}", x, lambda norm=norm, spec=spec: norm(spec)))
    return _ratios(fns, device)


def bench_instance(device):
    "functional.instance_norm: the two instance kernels (`kernel_affine.instance_norm`) against the eager path."
    from specnorm.functional import instance_norm

    fns = []
    for b in BATCHES:
        x = _batch(b, device)
        for axes in ((2, 3), (3,)):
            fns.append((f"instance_norm axes={axes}, B={b}", x, lambda x=x, axes=axes: instance_norm(x, axes)))
    return _ratios(fns, device)


def bench_moments(device, smoke=False):
    """`StatsRecorder.update` (kernel_moments: 2 launches) vs its eager path and `torch.var_mean`, per clone.

    Rows name the CUDA kernels one update launches (torch.profiler), after a warm-up update."""
    from specnorm.functional import CHANNEL_AXES, GLOBAL_AXES
    from specnorm.stats import StatsRecorder

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
                    with triton_switch("0"):  # the eager path, same call
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
        with tiles(module, n_rows, chunk, warps), triton_switch("1"):  # opt-in kernels too
            ratio = cuda_time(run, device) / clone
        rows.append((f"{name}, kernel [{n_rows}, {chunk}] x {warps} warps", f"{ratio:.2f}x"))
    with triton_switch("0"):
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
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        sys.exit("benchmarks.gpu_kernels: the Triton kernels run on CUDA only (no CUDA device here)")
    rows = [
        row
        for bench in (bench_affine, bench_instance, bench_moments, bench_pcen, bench_sliding)
        for row in bench(device)
    ]
    print(f"### Triton kernels ({machine(device)})\n")
    print(markdown_table(("batch [B, 1, 201, 401] float32", "time / clone"), rows))


if __name__ == "__main__":
    main()
