"""Speed of SpecNormalize against a memory copy (`x.clone()`, the memory-bound limit) and against
fastai's `Normalize` (`(x - mean) / std`), on a spectrogram batch, timed in the same call."""

import torch
from fastai.data.transforms import Normalize
from fastai.torch_core import TensorImage

from .common import markdown_table, timeit


def run(device="cpu", smoke=False):
    from specnorm.audio import AudioSpectrogram
    from specnorm.normalize import SpecNormalize

    b, c, f, t = (4, 1, 20, 30) if smoke else (64, 1, 201, 401)
    repeat, rounds = (3, 1) if smoke else (9, 3)
    gen = torch.Generator().manual_seed(0)
    level = torch.linspace(-90, -20, f).reshape(1, 1, f, 1)
    x = (level + 10 * torch.randn(b, c, f, t, generator=gen)).to(device)
    spec = AudioSpectrogram(x, sr=16000, hop_length=200, to_db=True)
    image = TensorImage(x)

    rows = []
    for name, axes in (("global, axes=(0, 2, 3)", (0, 2, 3)), ("per frequency row, axes=(0, 1, 3)", (0, 1, 3))):
        mean, std = x.mean(axes, keepdim=True), x.std(axes, keepdim=True)
        fastai_norm = Normalize(mean, std, axes=axes)
        ours = SpecNormalize(mean, std, axes=axes)
        unchecked = SpecNormalize(mean, std, axes=axes, check_finite=False)
        fns = [lambda: x.clone(), lambda: fastai_norm(image), lambda: ours(spec), lambda: unchecked(spec)]
        # Rounds interleave the candidates and each keeps its best median, so a slow spell of a
        # shared machine does not land on one column only.
        best = [
            min(ts)
            for ts in zip(*[[timeit(fn, device=device, repeat=repeat, warmup=2) for fn in fns] for _ in range(rounds)])
        ]
        rows.append((name, *(f"{s / best[0]:.2f}x" for s in best[1:])))

    table = markdown_table(
        ("statistics", "fastai `Normalize`", "SpecNormalize", "SpecNormalize(check_finite=False)"), rows
    )
    return (
        f"### SpecNormalize, {device}\n\nOne float32 batch `[{b}, {c}, {f}, {t}]`: time of each normalization "
        f"as a multiple of `x.clone()` on the same batch (a memory copy, the memory-bound limit; 1.00x is "
        f"as fast as a copy, lower is better). fastai's `Normalize` computes `(x - mean) / std` on a "
        f"`TensorImage`; SpecNormalize is one fused multiply-add, plus one sum of the output for its NaN/Inf "
        f"check unless `check_finite=False`.\n\n" + table
    )
