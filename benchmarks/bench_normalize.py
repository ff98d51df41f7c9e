"""Speed of SpecNormalize against a memory copy (`x.clone()`, the memory-bound limit) and against
fastai's `Normalize` (`(x - mean) / std`), on a spectrogram batch, timed in the same call."""

import torch
from fastai.data.transforms import Normalize
from fastai.torch_core import TensorImage

from .common import kernel_time, markdown_table, timeit


def run(device="cpu", smoke=False):
    from specnorm.audio import AudioSpectrogram
    from specnorm.functional import CHANNEL_AXES, GLOBAL_AXES
    from specnorm.normalize import SpecNormalize

    cuda = torch.device(device).type == "cuda"
    batches = [4] if smoke else [64] + ([256] if cuda else [])
    c, f, t = (1, 20, 30) if smoke else (1, 201, 401)
    repeat, rounds = (3, 1) if smoke else (25, 7)  # ~1 ms calls: many, to even out page faults
    rows, gpu_rows = [], []
    for b in batches:
        gen = torch.Generator().manual_seed(0)
        level = torch.linspace(-90, -20, f).reshape(1, 1, f, 1)
        x = (level + 10 * torch.randn(b, c, f, t, generator=gen)).to(device)
        spec = AudioSpectrogram(x, sr=16000, hop_length=200, to_db=True)
        image = TensorImage(x)
        for name, axes in (("global", GLOBAL_AXES), ("per frequency row", CHANNEL_AXES)):
            mean, std = x.mean(axes, keepdim=True), x.std(axes, keepdim=True)
            fastai_norm = Normalize(mean, std, axes=axes)
            ours = SpecNormalize(mean, std, axes=axes)
            unchecked = SpecNormalize(mean, std, axes=axes, check_finite=False)
            fns = [lambda: x.clone(), lambda: fastai_norm(image), lambda: ours(spec), lambda: unchecked(spec)]
            # Rounds interleave the candidates and each keeps its best median, so a slow spell of a
            # shared machine does not land on one column only.
            best = [
                min(ts)
                for ts in zip(
                    *[[timeit(fn, device=device, repeat=repeat, warmup=2) for fn in fns] for _ in range(rounds)]
                )
            ]
            ours.check()  # the deferred NaN/Inf check, once per run as once per epoch
            rows.append((f"`[{b}, {c}, {f}, {t}]`, {name} `axes={axes}`", *(f"{s / best[0]:.2f}x" for s in best[1:])))
            if cuda:
                gpu = [kernel_time(fn) for fn in fns]
                ours.check()
                gpu_rows.append(
                    (
                        f"`[{b}, {c}, {f}, {t}]`, {name}",
                        f"{gpu[0] * 1e6:.1f} µs",
                        *(f"{s / gpu[0]:.2f}x" for s in gpu[1:]),
                    )
                )

    table = markdown_table(
        ("batch, statistics", "fastai `Normalize`", "SpecNormalize", "SpecNormalize(check_finite=False)"), rows
    )
    return (
        f"### SpecNormalize, {device}\n\nFloat32 spectrogram batches: time of each normalization as a multiple "
        f"of `x.clone()` on the same batch (a memory copy, the memory-bound limit; 1.00x is as fast as a copy, "
        f"lower is better). fastai's `Normalize` computes `(x - mean) / std` on a `TensorImage`; SpecNormalize "
        f"is one multiply-add pass (on the CPU `torch.add` with scalars for global statistics, `functional.affine`, a "
        f"fused batch-norm kernel, per row), plus, unless `check_finite=False`, one sum of the output whose result "
        f"stays on the device (the deferred NaN/Inf check, `FiniteCheck(reduction='sum')`; no host sync); on CUDA one "
        f"Triton kernel does both, counting the NaN/Inf outputs as it writes them (`specnorm.kernel_affine`). Each "
        f"call is timed on its own, with a sync after it (on a GPU: launch overhead and sync latency included).\n\n"
        + table
        + (
            "\n\nGPU time alone (the kernels each call runs, from `torch.profiler`; what the call costs the device "
            "while the host queues the next batch's work), as a multiple of the clone's:\n\n"
            + markdown_table(
                (
                    "batch, statistics",
                    "x.clone()",
                    "fastai `Normalize`",
                    "SpecNormalize",
                    "SpecNormalize(check_finite=False)",
                ),
                gpu_rows,
            )
            if gpu_rows
            else ""
        )
    )
