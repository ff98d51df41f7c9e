"""Speed of the Triton kernels on CUDA against a memory copy (`x.clone()` of the batch), timed in the same call.

One function per kernel module, `bench_<name>(device)`, returning markdown rows `(name, time / clone, GPU time /
clone's)`; each kernel row comes with the eager path it replaces (`SPECNORM_TRITON=0`) timed in the same run.
"time" is a synchronized call (launch overhead included; CUDA events around the call for PCEN and sliding),
"GPU time" the kernels' own time (`common.kernel_time`, torch.profiler).
`python -m benchmarks.gpu_kernels` prints them all, each module's rows as soon as they are timed (CUDA only: on
the CPU the kernels are not used).
"""

import os
import sys
from contextlib import contextmanager

import torch

from .common import kernel_time, machine, markdown_table, timeit

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


def _gpu_ratio(fn, clone_fn, device):
    "GPU time of `fn` per clone's (profiler kernel time), on CUDA; a dash elsewhere."
    return f"{kernel_time(fn) / kernel_time(clone_fn):.2f}x" if torch.device(device).type == "cuda" else "-"


def _ratios(fns, device, repeat=50):
    "Each `(name, fn)` timed with triton on and off (kill switch), as a ratio to a clone timed alongside."
    rows = []
    for name, x, fn in fns:
        clone = timeit(lambda: x.clone(), device=device, repeat=repeat)
        for switch in ("1", "0"):
            with triton_switch(switch):
                t = timeit(fn, device=device, repeat=repeat)
                gpu = _gpu_ratio(fn, x.clone, device)
            rows.append((f"{name}, {'triton' if switch == '1' else 'eager'}", f"{t / clone:.2f}x", gpu))
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
    """functional.instance_norm: the two instance kernels (`kernel_affine.instance_norm`) against the eager path;
    and `InstanceSpecNorm`, which also checks for NaN/Inf (counted by the second kernel on CUDA)."""
    from specnorm.audio import AudioSpectrogram
    from specnorm.functional import instance_norm
    from specnorm.instance import InstanceSpecNorm

    fns = []
    for b in BATCHES:
        x = _batch(b, device)
        spec = AudioSpectrogram(x, sr=16000)
        for axes in ((2, 3), (3,)):
            fns.append((f"instance_norm axes={axes}, B={b}", x, lambda x=x, axes=axes: instance_norm(x, axes)))
            norm = InstanceSpecNorm(axes)
            fns.append((f"InstanceSpecNorm({axes}), B={b}", x, lambda norm=norm, spec=spec: norm(spec)))
    return _ratios(fns, device)


def bench_transforms(device):
    "`SlidingSpecNorm(300)` and `PCEN()` as a pipeline calls them (NaN/Inf check included), kernels on and off."
    from specnorm.audio import AudioSpectrogram
    from specnorm.pcen import PCEN
    from specnorm.sliding import SlidingSpecNorm

    fns = []
    for b in BATCHES:
        x = _batch(b, device)
        energy = (x / 10).exp()  # a linear spectrogram for PCEN
        db, lin = AudioSpectrogram(x, sr=16000, hop_length=160), AudioSpectrogram(energy, sr=16000, hop_length=160)
        sliding, pcen = SlidingSpecNorm(300), PCEN()
        fns.append((f"SlidingSpecNorm(300), B={b}", x, lambda t=sliding, s=db: t(s)))
        fns.append((f"PCEN(), B={b}", energy, lambda t=pcen, s=lin: t(s)))
    return _ratios(fns, device)


# kernel_affine's (_INSTANCE_TILE, _INSTANCE_COLS, _STATS_TILE): its defaults first
INSTANCE_TILES = ((2048, 512, 1024), (4096, 512, 1024), (1024, 512, 1024), (2048, 256, 1024), (2048, 512, 2048))


@contextmanager
def module_settings(module, **values):
    "A kernel module's launch settings (module-level names) set to `values` inside the block: the sweeps here."
    before = {name: getattr(module, name) for name in values}
    for name, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(module, name, value)


def bench_instance_tiles(device, settings=INSTANCE_TILES):
    "`InstanceSpecNorm` (its count included) at each launch setting of the instance kernels, GPU time per clone's."
    from specnorm import kernel_affine
    from specnorm.audio import AudioSpectrogram
    from specnorm.instance import InstanceSpecNorm

    rows = []
    for b in BATCHES:
        x = _batch(b, device)
        spec = AudioSpectrogram(x, sr=16000)
        for axes in ((2, 3), (3,)):
            norm = InstanceSpecNorm(axes)
            for setting in settings:
                names = ("_INSTANCE_TILE", "_INSTANCE_COLS", "_STATS_TILE")
                with module_settings(kernel_affine, **dict(zip(names, setting))):
                    gpu = _gpu_ratio(lambda: norm(spec), x.clone, device)
                rows.append((f"InstanceSpecNorm({axes}), B={b}, tiles {setting}", "", gpu))
    return rows


def kernels_per_call(device):
    "The CUDA kernels one call of each transform runs, with their GPU time (torch.profiler), at B=64."
    from torch.profiler import ProfilerActivity, profile

    from specnorm.audio import AudioSpectrogram
    from specnorm.functional import CHANNEL_AXES, instance_norm
    from specnorm.instance import InstanceSpecNorm
    from specnorm.normalize import SpecNormalize
    from specnorm.pcen import PCEN
    from specnorm.sliding import SlidingSpecNorm

    x = _batch(64, device)
    spec = AudioSpectrogram(x, sr=16000, hop_length=160)
    lin = AudioSpectrogram((x / 10).exp(), sr=16000, hop_length=160)
    stats = (x.mean(CHANNEL_AXES, keepdim=True).cpu(), x.std(CHANNEL_AXES, keepdim=True).cpu())
    norm = SpecNormalize(*stats, axes=CHANNEL_AXES)
    instance, sliding, pcen = InstanceSpecNorm(), SlidingSpecNorm(300), PCEN()
    calls = {
        "x.clone()": x.clone,
        "instance_norm(x, (2, 3))": lambda: instance_norm(x, (2, 3)),
        "InstanceSpecNorm()": lambda: instance(spec),
        "SlidingSpecNorm(300)": lambda: sliding(spec),
        "PCEN()": lambda: pcen(lin),
        "SpecNormalize per row": lambda: norm(spec),
    }
    lines = []
    for name, fn in calls.items():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                fn()
            torch.cuda.synchronize()
        kernels = {}
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                kernels[e.name[:70]] = kernels.get(e.name[:70], 0) + e.time_range.elapsed_us() / 10
        lines.append(f"- {name}: " + "; ".join(f"`{k}` {v:.1f} µs" for k, v in kernels.items()))
    return lines


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
            rows.append((f"`torch.var_mean` {list(shape)}, {where}", f"{base / clone:.2f}", ""))
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
                rows.append((f"`StatsRecorder.update` {list(shape)}, {where}, {path}{kernels}", f"{t / clone:.2f}", ""))
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


# Launch settings to compare, (rows per program, frames per tile, warps): the module's default first.
PCEN_TILES = ((8, 32, 4), (8, 32, 2), (8, 64, 4), (4, 32, 4), (16, 32, 4))
SLIDING_TILES = ((4, 32, 2), (8, 32, 2), (4, 32, 4), (4, 64, 2), (2, 32, 2))


def kernel_rows(name, module, run, device, clone_fn, settings):
    "One row per launch setting (on CUDA only: elsewhere the kernel does not run), then one for the eager path."
    clone = cuda_time(clone_fn, device)
    rows = []
    for n_rows, chunk, warps in settings if torch.device(device).type == "cuda" else ():
        with (
            module_settings(module, ROWS=n_rows, CHUNK=chunk, NUM_WARPS=warps),
            triton_switch("1"),
        ):  # a kernel not yet in MEASURED too
            ratio = cuda_time(run, device) / clone
            gpu = _gpu_ratio(run, clone_fn, device)
        rows.append((f"{name}, kernel [{n_rows}, {chunk}] x {warps} warps", f"{ratio:.2f}x", gpu))
    with triton_switch("0"):
        ratio, gpu = cuda_time(run, device) / clone, _gpu_ratio(run, clone_fn, device)
        rows.append((f"{name}, eager (SPECNORM_TRITON=0)", f"{ratio:.2f}x", gpu))
    return rows


def bench_pcen(device="cuda", batches=BATCHES, shape=SHAPE, settings=PCEN_TILES):
    "`functional.pcen` (librosa's defaults): the one-pass kernel at each launch setting, and the eager path."
    from specnorm import kernel_pcen
    from specnorm.functional import pcen

    rows = []
    for n in batches:
        x = torch.rand(n, *shape, device=device)
        rows += kernel_rows(f"pcen, B={n}", kernel_pcen, lambda: pcen(x), device, x.clone, settings)
    return rows


def bench_sliding(device="cuda", batches=BATCHES, shape=SHAPE, window=300, settings=SLIDING_TILES):
    "`functional.sliding_norm` (centred window of 300 frames, means only and with variances) per clone."
    from specnorm import kernel_sliding
    from specnorm.functional import sliding_norm

    rows = []
    for n in batches:
        x = torch.randn(n, *shape, device=device) * 10 - 50  # dB-like values
        for norm_vars in (False, True):
            run = lambda: sliding_norm(x, window, norm_vars=norm_vars)
            name = f"sliding_norm({window}{', norm_vars' if norm_vars else ''}), B={n}"
            rows += kernel_rows(name, kernel_sliding, run, device, x.clone, settings)
    return rows


def main(device="cuda"):
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        sys.exit("benchmarks.gpu_kernels: the Triton kernels run on CUDA only (no CUDA device here)")
    print(f"### Triton kernels ({machine(device)})\n")
    header = ("batch [B, 1, 201, 401] float32", "time / clone", "GPU time / clone's")
    print(markdown_table(header, []), flush=True)
    # each module's rows as soon as they are timed: a time box that ends the run keeps what was measured
    benches = (bench_instance, bench_transforms, bench_pcen, bench_sliding, bench_instance_tiles, bench_affine)
    for bench in (*benches, bench_moments):
        for row in bench(device):
            print(markdown_table(header, [row]).splitlines()[-1], flush=True)
    print("\nKernels per call, B=64 (GPU time per call):\n")
    print("\n".join(kernels_per_call(device)), flush=True)


if __name__ == "__main__":
    main()
