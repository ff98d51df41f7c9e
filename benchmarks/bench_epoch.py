"""The share of one training epoch spent in spectrogram normalization: a training epoch of a small
xresnet18 on spectrogram batches, against `SpecNormalize` applied to the same batches, in one run."""

import time

import torch

from .common import markdown_table, sync, timeit


def run(device="cpu", smoke=False):
    from functools import partial

    from fastai.learner import Learner
    from fastai.vision.models.xresnet import xresnet18

    from specnorm.all import CHANNEL_AXES, AudioSpectrogram, SpecNormalize, StatsRecorder, make_xresnet_grayscale

    # A training set's worth of ready spectrogram batches, so the epoch times the model and the normalizer only.
    n_batches, shape = (2, (4, 1, 32, 40)) if smoke else (10, (32, 1, 201, 161))
    gen = torch.Generator().manual_seed(0)
    level = torch.linspace(-90, -20, shape[2]).reshape(1, 1, -1, 1)
    batches = [
        AudioSpectrogram(
            (level + 10 * torch.randn(shape, generator=gen)).to(device), sr=16000, hop_length=100, to_db=True
        )
        for _ in range(n_batches)
    ]
    labels = [torch.randint(0, 10, (shape[0],), generator=gen).to(device) for _ in range(n_batches)]
    rec = StatsRecorder(CHANNEL_AXES)
    for x in batches:
        rec.update(x)
    norm = SpecNormalize.from_stats(rec)

    from fastai.data.core import DataLoaders

    data = list(zip([norm(x) for x in batches], labels))
    dls = DataLoaders(data, data[:1], device=device)
    model = make_xresnet_grayscale(partial(xresnet18, widen=0.25, stem_szs=(16, 16, 64))(n_out=10)).to(device)
    learn = Learner(dls, model, loss_func=torch.nn.CrossEntropyLoss())
    with learn.no_bar(), learn.no_logging():
        learn.fit(1)  # warm-up
        sync(device)
        start = time.perf_counter()
        learn.fit(1)
        sync(device)
        epoch = time.perf_counter() - start
    per_batch = timeit(lambda: norm(batches[0]), device=device, repeat=3 if smoke else 9)
    stats = timeit(lambda: rec.update(batches[0]), device=device, repeat=3 if smoke else 9)
    rows = [
        ("one training epoch (forward, backward, step; validation of 1 batch)", f"{epoch * 1e3:.0f} ms", "100%"),
        (
            "SpecNormalize on the epoch's batches",
            f"{per_batch * n_batches * 1e3:.1f} ms",
            f"{100 * per_batch * n_batches / epoch:.2f}%",
        ),
        (
            "StatsRecorder.update on the epoch's batches (one statistics pass)",
            f"{stats * n_batches * 1e3:.1f} ms",
            f"{100 * stats * n_batches / epoch:.2f}%",
        ),
    ]
    return (
        f"### Normalization in a training epoch, {device}\n\n{n_batches} batches `{list(shape)}` "
        "(per-frequency-row statistics), xresnet18 a quarter as wide (0.7 M parameters): the time "
        "normalization takes, as a share of the epoch.\n\n" + markdown_table(("work", "time", "share"), rows)
    )
