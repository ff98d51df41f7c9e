"""The normalization experiment: which normalization suits a dataset? `compare` trains and tells.

This is the reference ESC-50 normalization workflow (fastai + fastaudio) made into functions:
spectrograms of 5 s clips at 16 kHz (`AudioConfig.BasicSpectrogram`), each waveform standardized
(`AudioNormalize`), an xresnet18 (Bag of Tricks, He et al., CVPR 2019; fastai's `xresnet18`) trained
from scratch on 1-channel spectrograms with `fit_one_cycle` (Smith, "A disciplined approach to neural
network hyper-parameters", 2018), and the validation accuracy of the last epoch averaged over several
runs. On ESC-50 fold 1 (1600 training clips, 20 epochs, mean of 5 runs) it gave `REFERENCE_ACCURACY`;
fastaudio's baseline for the same setup was `FASTAUDIO_BASELINE`.

Normalizations are named entries of `METHODS`: a function from the training-set statistics to the
batch transforms that follow `AudioToSpec`. 'none' adds nothing; 'global' (`SpecNormalize`,
`axes=(0, 2, 3)`) and 'channel' (`axes=(0, 1, 3)`, one mean and std per frequency row) use statistics
of the training split only, computed once per dataset in one pass and shared by every method and run.
'instance' (`InstanceSpecNorm`, each clip by its own statistics), 'sliding' (`SlidingSpecNorm`,
Kaldi's sliding-window mean normalization over 300 frames: 3 s at Kaldi's 10 ms hop, 3.75 s at the
200-sample hop of `BasicSpectrogram` at 16 kHz) and 'pcen' (`PCEN` on the linear spectrogram, in place
of dB) need no statistics. `register_method` adds more.
"""

import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastai.callback.progress  # patches Learner.no_bar
import fastai.callback.schedule  # noqa: F401 (patches Learner.fit_one_cycle)
import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.data.transforms import get_c
from fastai.learner import Learner
from fastai.metrics import accuracy
from fastai.torch_core import noop, set_seed
from fastai.vision.models.xresnet import xresnet18

from .config import AudioConfig
from .data import get_dls
from .distributed import ddp_callbacks, on_rank_zero_output, rank
from .functional import CHANNEL_AXES, GLOBAL_AXES
from .instance import InstanceSpecNorm
from .normalize import AudioNormalize, CheckFinite, SpecNormalize
from .pcen import PCEN
from .progress import interactive
from .sliding import SlidingSpecNorm
from .spectrogram import AudioToSpec

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "FASTAUDIO_BASELINE",
    "LINEAR_METHODS",
    "METHODS",
    "REFERENCE_ACCURACY",
    "STATS_AXES",
    "EpochLines",
    "TrainStats",
    "compare",
    "make_xresnet_grayscale",
    "plot_results",
    "register_method",
    "train_loops",
]

# Mean validation accuracy of 5 runs on ESC-50 fold 1, xresnet18 from scratch, 20 epochs.
REFERENCE_ACCURACY = {"none": 0.7110, "global": 0.7315, "channel": 0.7144}
FASTAUDIO_BASELINE = 0.6664
# The reduced dims of each kind of training-set statistic, for [B, C, F, T] spectrogram batches.
STATS_AXES = {"global": GLOBAL_AXES, "channel": CHANNEL_AXES}


def make_xresnet_grayscale(model: nn.Module, n_in: int = 1) -> nn.Module:
    """Make a model's first convolution take `n_in` input channels: each gets the mean of its old weights.

    The stem of fastai's `xresnet` takes 3 (RGB) channels; spectrograms have 1. Averaging the first
    conv's weights over its input channels (the reference workflow's way) gives a 1-channel stem
    that responds to a grey image as the 3-channel one did to its RGB copy, scaled by 1/3. With
    `n_in > 1` every input channel gets that mean. The model is changed in place and returned.

    Args:
        model: any `nn.Module` holding an `nn.Conv2d` (the first one found is changed).
        n_in (int): the new number of input channels.

    Shape:
        The returned model takes `[B, n_in, H, W]`.

    Example:
        >>> import torch
        >>> from fastai.vision.models.xresnet import xresnet18
        >>> model = make_xresnet_grayscale(xresnet18(n_out=10))
        >>> model[0][0].weight.shape, model(torch.randn(2, 1, 64, 64)).shape
        (torch.Size([32, 1, 3, 3]), torch.Size([2, 10]))
    """
    if int(n_in) != n_in or n_in < 1:
        raise ValueError(f"n_in must be a positive integer, got {n_in!r}")
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d to make {n_in}-channel")
    if conv.groups != 1:
        raise ValueError(
            f"the first conv of {type(model).__name__} is grouped (groups={conv.groups}): "
            "its input channels cannot be averaged"
        )
    with torch.no_grad():
        weight = conv.weight.mean(1, keepdim=True).repeat(1, int(n_in), 1, 1)
    conv.weight = nn.Parameter(weight)
    conv.in_channels = int(n_in)
    return model


class EpochLines(Callback):
    """Print one plain line per epoch with its figures, in place of fastai's progress bars and table.

    For output that is not a terminal or a notebook (a CI log, `> file`), where every redraw of a
    progress bar would stay. `train_loops` uses it there; the line reads
    `"{label} epoch 3/20: train_loss 1.2345 valid_loss 1.3456 accuracy 0.5250 time 00:04"`.
    A learner under `no_logging()` prints nothing.

    Args:
        label (str): what the line starts with (e.g. `'global run 2/5'`).

    Example:
        >>> learn = Learner(dls, model, metrics=accuracy)        # doctest: +SKIP
        >>> with learn.no_bar(), learn.added_cbs(EpochLines('global run 1/5')):   # doctest: +SKIP
        ...     learn.fit_one_cycle(20)
    """

    order = 60  # where fastai's ProgressCallback stands: after the Recorder (50) has the epoch's figures

    def __init__(self, label: str = ""):
        self.label = label

    def before_fit(self) -> None:
        # The Recorder hands each epoch's row to `learn.logger`; put ours in its place, as ProgressCallback does
        # (unless logging is off: `no_logging()` installs fastai's `noop`).
        self.old_logger = self.learn.logger
        if self.old_logger is not noop:
            self.learn.logger = self._line

    def _line(self, row):
        names = self.recorder.metric_names
        figures = " ".join(
            f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
            for name, value in zip(names[1:], list(row)[1:])
        )
        prefix = f"{self.label} " if self.label else ""
        print(f"{prefix}epoch {int(row[0]) + 1}/{self.n_epoch}: {figures}", flush=True)

    def after_fit(self) -> None:
        self.learn.logger = self.old_logger


def _accuracy_of_last_epoch(learn):
    # Recorder.values rows hold the metric names after 'epoch' (train_loss, valid_loss, metrics...).
    names = [n for n in learn.recorder.metric_names if n not in ("epoch", "time")]
    # Rounded: the metric is a float32 (0.7999999821 for 0.8); 6 decimals are far finer than one clip.
    return round(float(learn.recorder.values[-1][names.index("accuracy")]), 6)


@on_rank_zero_output
def train_loops(
    dls: DataLoaders,
    name: str,
    num_runs: int = 5,
    epochs: int = 20,
    num_cls: int | None = None,
    arch: Callable[..., nn.Module] = xresnet18,
    lr: float | None = None,
    n_in: int = 1,
    seed: int | None = None,
    quiet: bool = False,
) -> list[float]:
    """Train `num_runs` fresh models on `dls` with `fit_one_cycle`; print and return their accuracies.

    Each run builds `arch(n_out=num_cls)`, makes its stem `n_in`-channel with `make_xresnet_grayscale`,
    and trains a `Learner(dls, model, metrics=accuracy)` for `epochs` epochs. A run's accuracy is
    the validation accuracy of its last epoch. It prints a line per run (`"global run 2/5: accuracy
    0.7250 in 95 s"`) and ends with `"{name}: mean accuracy 0.7315 over 5 runs"`. On a terminal or in a
    notebook each run shows fastai's progress bars and epoch table; elsewhere (a log file) each epoch is
    one plain line (`EpochLines`), so a redirected output stays small.

    Args:
        dls: fastai `DataLoaders` of spectrogram batches `[B, n_in, F, T]`.
        name (str): label of the printed line (the normalization's name).
        num_runs (int): number of models trained from scratch.
        epochs (int): epochs of `fit_one_cycle` per run.
        num_cls (int): number of classes; default `dls.c`.
        arch: called as `arch(n_out=num_cls)` to build a model (default fastai's `xresnet18`; e.g.
            `partial(xresnet18, widen=0.25)` is smaller).
        lr (float): the one-cycle peak learning rate; `None` is fastai's default (1e-3).
        n_in (int): input channels of the spectrograms.
        seed (int): run `i` seeds python, numpy, torch and the loaders' shuffling with `seed + i`
            (`set_seed(seed + i, reproducible=True)`), so the runs are reproducible.
        quiet (bool): no progress, no epoch lines, no run lines: only the result line.

    Returns:
        A list of `num_runs` accuracies (floats in [0, 1]).

    Example:
        >>> accs = train_loops(dls, 'global', num_runs=5, epochs=20, quiet=True)   # doctest: +SKIP
        global: mean accuracy 0.7315 over 5 runs
    """
    if num_runs < 1 or epochs < 1:
        raise ValueError(f"num_runs and epochs must be >= 1, got num_runs={num_runs}, epochs={epochs}")
    num_cls = get_c(dls) if num_cls is None else num_cls
    if not num_cls:
        raise ValueError("cannot tell the number of classes from dls (no dls.c or vocab): pass num_cls")
    accs = []
    for run in range(num_runs):
        if seed is not None:
            set_seed(seed + run, reproducible=True)
            for dl in dls.loaders:  # each loader shuffles with its own generator, seeded when it was built
                dl.rng = random.Random(seed + run)
        start = time.perf_counter()
        model = make_xresnet_grayscale(arch(n_out=num_cls), n_in)
        # CheckFinite raises the transforms' deferred NaN/Inf errors after each epoch; DDP under torch.distributed.
        learn = Learner(dls, model, metrics=accuracy, cbs=[CheckFinite(), *ddp_callbacks()])
        with ExitStack() as output:
            if quiet:
                output.enter_context(learn.no_bar())
                output.enter_context(learn.no_logging())
            elif not interactive():  # a log file: plain lines, no bar redraws
                output.enter_context(learn.no_bar())
                output.enter_context(learn.added_cbs(EpochLines(f"{name} run {run + 1}/{num_runs}")))
            learn.fit_one_cycle(epochs, lr)
        accs.append(_accuracy_of_last_epoch(learn))
        if not quiet:
            seconds = time.perf_counter() - start
            print(f"{name} run {run + 1}/{num_runs}: accuracy {accs[-1]:.4f} in {seconds:.0f} s", flush=True)
    print(f"{name}: mean accuracy {np.mean(accs):.4f} over {num_runs} runs", flush=True)
    return accs


class TrainStats:
    """Spectrogram statistics of a training split, computed on first use, once for all kinds.

    `stats['global']` and `stats['channel']` are `StatsRecorder`s (`.mean`, `.std`) reduced over
    `STATS_AXES`; the first lookup computes every kind in one pass over `dl` with `compute_stats`.

    Args:
        dl: a loader over the training items whose batches are spectrograms, not normalized.
        fraction (float): share of the training items read (a random subset drawn with `seed`), passed
            to `compute_stats`.
        progress (bool): show a progress bar while computing.
        seed (int): seed of the random subset when `fraction < 1`.

    Example:
        >>> stats = TrainStats(dls.train.new(shuffle=False, drop_last=False))   # doctest: +SKIP
        >>> SpecNormalize.from_stats(stats['channel'])                          # doctest: +SKIP
    """

    def __init__(self, dl: DataLoader, fraction: float = 1.0, progress: bool = True, seed: int = 0):
        self.dl, self.fraction, self.progress, self.seed = dl, fraction, progress, seed
        self._recorders = None

    @property
    def computed(self) -> bool:
        return self._recorders is not None

    def __getitem__(self, kind):
        if kind not in STATS_AXES:
            raise KeyError(f"no statistic {kind!r}: the kinds are {list(STATS_AXES)}")
        if self._recorders is None:
            from .stats import compute_stats

            recorders = compute_stats(
                self.dl,
                red_dims=tuple(STATS_AXES.values()),
                fraction=self.fraction,
                progress=self.progress,
                seed=self.seed,
            )
            self._recorders = dict(zip(STATS_AXES, recorders))
        return self._recorders[kind]

    def as_lists(self) -> dict[str, dict[str, list[float]]]:
        "`{kind: {'mean': [...], 'std': [...]}}` of what has been computed, as plain floats."
        if self._recorders is None:
            return {}
        return {
            kind: {k: torch.as_tensor(getattr(r, k)).flatten().tolist() for k in ("mean", "std")}
            for kind, r in self._recorders.items()
        }


def _spec_normalize(kind, stats):
    return [SpecNormalize.from_stats(stats[kind], axes=STATS_AXES[kind])]


METHODS = {
    "none": lambda stats: [],
    "global": partial(_spec_normalize, "global"),
    "channel": partial(_spec_normalize, "channel"),
    # Normalizations that need no training statistics (issue: beyond global and channel).
    "instance": lambda stats: [InstanceSpecNorm()],
    "sliding": lambda stats: [SlidingSpecNorm(window=300)],
    "pcen": lambda stats: [PCEN()],
}
# Methods that take the linear spectrogram: `compare` builds their `AudioToSpec` with `to_db=False`.
LINEAR_METHODS = {"pcen"}


def register_method(name: str, make_batch_tfms: Callable[[TrainStats], list], linear: bool = False) -> None:
    """Add (or replace) a normalization `compare` can run, under `name`.

    Args:
        name (str): the method's name in `compare(methods=...)` and in its results.
        make_batch_tfms: called with a `TrainStats` (look up `stats['global']` or `stats['channel']`
            only if needed: the first lookup computes them) and returning the list of batch transforms
            that follow `AudioToSpec` in the method's DataLoaders.
        linear (bool): the method takes linear (power) spectrograms, not dB (as PCEN does).

    Example:
        >>> register_method('channel_unit_std',
        ...                 lambda stats: [SpecNormalize(0.0, stats['channel'].std, axes=(0, 1, 3))])
        >>> 'channel_unit_std' in METHODS
        True
        >>> del METHODS['channel_unit_std']
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a method's name must be a non-empty string, got {name!r}")
    if not callable(make_batch_tfms):
        raise TypeError(f"make_batch_tfms must be callable, got {type(make_batch_tfms).__name__}")
    METHODS[name] = make_batch_tfms
    (LINEAR_METHODS.add if linear else LINEAR_METHODS.discard)(name)


# Registered methods that need no training statistics: with only these, `compare` makes no statistics pass.
_STATISTICS_FREE = {"none", "instance", "sliding", "pcen"}


def _duration(seconds):
    "`'45 s'`, `'12 min'`, `'2 h 05 min'`: a duration as a person reads it."
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _time_one_batch(dl, arch, n_in, num_cls, lr):
    """Seconds to load one training batch from `dl`, and to train a fresh `arch` on it once (forward, backward, step).

    Two batches and two steps are timed and the second of each kept: the first pays for start-up (worker
    processes, memory allocation, kernel selection). A host sync (`torch.cuda.synchronize`) ends each step:
    this runs once, before training, never in a training loop.
    """
    batches = iter(dl)
    start = time.perf_counter()
    xb, yb = next(batches)[:2]
    load = time.perf_counter() - start
    try:
        start = time.perf_counter()
        next(batches)
        load = time.perf_counter() - start
    except StopIteration:
        pass
    xb, yb = xb.as_subclass(torch.Tensor), yb.as_subclass(torch.Tensor)
    model = make_xresnet_grayscale(arch(n_out=num_cls), n_in).to(xb.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr or 1e-3)
    for _ in range(2):
        start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if xb.is_cuda:
            torch.cuda.synchronize(xb.device)
        step = time.perf_counter() - start
    return load, step, xb.device


def _plan(dls, methods, runs, epochs, bs, fraction, arch, lr):
    "The lines `compare` prints before it starts: what it will train, on how many clips, for about how long."
    n_train, n_valid = len(dls.train.dataset), len(dls.valid.dataset)
    load, step, device = _time_one_batch(dls.train.new(shuffle=False, drop_last=False), arch, 1, get_c(dls) or 2, lr)
    train_batches, valid_batches = max(1, n_train // bs), math.ceil(n_valid / bs)
    # Validation runs the forward pass only: about a third of a training step.
    epoch = train_batches * (load + step) + valid_batches * (load + step / 3)
    stats = 0.0 if set(methods) <= _STATISTICS_FREE else math.ceil(fraction * n_train / bs) * load
    total = len(methods) * runs * epochs * epoch + stats
    return (
        f"plan: {len(methods)} method{'s' * (len(methods) > 1)} ({', '.join(methods)}) x {runs} "
        f"run{'s' * (runs > 1)} x {epochs} epoch{'s' * (epochs > 1)}, each epoch {n_train} training clips "
        f"({train_batches} batches of {bs}) and {n_valid} validation clips, on {device}\n"
        f"estimated time: about {_duration(total)} (one batch timed here: loading {load:.2f} s, "
        f"a training step {step:.2f} s; a rough guide)"
    )


def _summary(accs_by_method):
    rows = {}
    for method, accs in accs_by_method.items():
        a = np.asarray(accs, dtype=np.float64)
        summary = dict(mean=a.mean(), std=a.std(ddof=1) if len(a) > 1 else 0.0, min=a.min(), max=a.max())
        rows[method] = {k: round(float(v), 6) for k, v in summary.items()} | dict(runs=[float(v) for v in a])
    results = pd.DataFrame.from_dict(rows, orient="index")
    results.index.name = "method"
    return results


def plot_results(results: pd.DataFrame, ax: "Axes | None" = None, title: str | None = None) -> "Axes":
    """Plot `compare`'s results: every run's accuracy as a point, the mean with a ±std error bar per method.

    Example:
        >>> ax = plot_results(results)   # doctest: +SKIP
    """
    if ax is None:
        import matplotlib.pyplot as plt

        ax = plt.subplots(figsize=(1.6 * len(results) + 2, 3.5))[1]
    for i, (_method, row) in enumerate(results.iterrows()):
        runs = np.asarray(row["runs"], dtype=float)
        # Points spread evenly sideways so equal accuracies stay visible.
        offsets = np.linspace(-0.15, 0.15, len(runs)) if len(runs) > 1 else np.zeros(1)
        ax.scatter(i + offsets, runs, s=18, color="0.55", zorder=2, label="runs" if i == 0 else None)
        ax.errorbar(
            i,
            row["mean"],
            yerr=row["std"],
            fmt="o",
            color="C3",
            capsize=6,
            markersize=8,
            zorder=3,
            label="mean ± std" if i == 0 else None,
        )
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels(results.index)
    ax.set_xlim(-0.6, len(results) - 0.4)
    ax.set_xlabel("normalization")
    ax.set_ylabel("validation accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    if title is not None:
        ax.set_title(title)
    return ax


def _save(results, folder, title):
    from matplotlib.figure import Figure  # no pyplot: works under any backend, and in threads

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = results.copy()
    table["runs"] = [json.dumps(r) for r in table["runs"]]
    table.to_csv(folder / "results.csv")
    fig = Figure(figsize=(1.6 * len(results) + 2, 3.5), layout="tight")
    plot_results(results, ax=fig.subplots(), title=title)
    fig.savefig(folder / "results.png", dpi=120)


@on_rank_zero_output
def compare(
    df: pd.DataFrame,
    path: str | os.PathLike,
    methods: Sequence[str] = ("none", "global", "channel"),
    runs: int = 5,
    epochs: int = 20,
    fold: int | str = 1,
    fraction: float = 1.0,
    audio_cfg: Any = None,
    seed: int | None = None,
    crop_ms: float = 5000,
    bs: int = 64,
    sample_rate: int = 16000,
    arch: Callable[..., nn.Module] = xresnet18,
    lr: float | None = None,
    audio_normalize: bool = True,
    save_to: str | os.PathLike | None = None,
    quiet: bool = False,
    **dls_kwargs,
) -> pd.DataFrame:
    """Train and score each normalization on a dataset: which one suits it?

    For each method, DataLoaders are built with `get_dls` (validation fold `fold`; every waveform
    resampled to `sample_rate`, downmixed, cropped or padded to `crop_ms`, and standardized by
    `AudioNormalize`), whose batch transforms are `AudioToSpec.from_cfg(audio_cfg)` followed by the
    method's (`METHODS[method](stats)`). Statistics come from the training split only, read once
    through the same pipeline without normalization, and serve every method. Then `train_loops`
    trains `runs` models of `arch` for `epochs` epochs.

    Args:
        df: one row per clip with `filename`, `category` and `fold` columns (ESC-50's `meta/esc50.csv`).
        path: the folder of the audio files (ESC-50: `path/'audio'`).
        methods: names in `METHODS` ('none', 'global', 'channel', and any registered).
        runs (int): models trained per method; epochs (int): epochs per model.
        fold: the validation fold.
        fraction (float): share of the training items the statistics are computed from (a random subset).
        audio_cfg: spectrogram settings (default `AudioConfig.BasicSpectrogram()`).
        seed (int): makes the statistics and the runs reproducible (run `i` uses `seed + i`).
        crop_ms (int): clip length in milliseconds; bs (int): batch size; sample_rate (int): Hz.
        arch, lr: the model builder and the one-cycle peak learning rate (see `train_loops`).
        audio_normalize (bool): standardize each waveform first (`AudioNormalize`), as the reference did.
        save_to: a folder to write `results.csv` (`runs` as a JSON list) and `results.png` into.
        quiet (bool): print only the result lines: no plan, no progress, no epoch or run lines.
        **dls_kwargs: passed to `get_dls` (`device`, `num_workers`, `cache_folder`...).

    Under torch.distributed (e.g. `torchrun --nproc_per_node N -m specnorm compare ...`), the statistics
    pass is sharded over the ranks and training is data-parallel (`specnorm.distributed.DDPTrainer`:
    each step still sees `bs` items, so `bs` must be a multiple of N); only rank 0 prints and saves.

    Returns:
        A DataFrame indexed by `method` (in the order given), with columns `mean`, `std` (sample std
        over runs, 0.0 for one run), `min`, `max` (accuracies in [0, 1], rounded to 6 decimals) and
        `runs` (the list of per-run accuracies). `results.attrs['stats']` holds the training-set statistics used,
        `{'global' | 'channel': {'mean': [...], 'std': [...]}}` (empty when no method needed them).

    Example:
        >>> df = pd.read_csv(path/'meta'/'esc50.csv')                            # doctest: +SKIP
        >>> results = compare(df, path/'audio', runs=5, epochs=20, save_to='results', quiet=True)   # doctest: +SKIP
        none: mean accuracy 0.7110 over 5 runs
        global: mean accuracy 0.7315 over 5 runs
        channel: mean accuracy 0.7144 over 5 runs
    """
    methods = [methods] if isinstance(methods, str) else list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(
            f"unknown normalization method(s) {unknown}: the methods are {list(METHODS)} "
            "(add others with register_method)"
        )
    if not methods or len(set(methods)) != len(methods):
        raise ValueError(f"methods must be distinct and at least one, got {methods}")
    if runs < 1 or epochs < 1:
        raise ValueError(f"runs and epochs must be >= 1, got runs={runs}, epochs={epochs}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    audio_cfg = AudioConfig.BasicSpectrogram() if audio_cfg is None else audio_cfg
    item_tfms = [AudioNormalize()] if audio_normalize else []

    def dls_with(method_tfms, to_db=audio_cfg.to_db):
        a2s = AudioToSpec.from_cfg(dataclasses.replace(audio_cfg, to_db=to_db))
        return get_dls(
            df,
            path,
            bs=bs,
            item_tfms=item_tfms,
            fold=fold,
            sample_rate=sample_rate,
            crop_signal_to=crop_ms,
            batch_tfms=[a2s, *method_tfms],
            **dls_kwargs,
        )

    if not quiet:
        # Before the seed is set: timing a batch draws random numbers the seeded runs must not miss.
        print(_plan(dls_with([]), methods, runs, epochs, bs, fraction, arch, lr), flush=True)
    if seed is not None:
        set_seed(seed, reproducible=True)
    # The training split in order, every item once, through the same pipeline minus normalization.
    stats = TrainStats(
        dls_with([]).train.new(shuffle=False, drop_last=False),
        fraction,
        progress=not quiet,
        seed=0 if seed is None else seed,
    )
    accs = {}
    for method in methods:
        dls = dls_with(METHODS[method](stats), to_db=audio_cfg.to_db and method not in LINEAR_METHODS)
        accs[method] = train_loops(dls, method, num_runs=runs, epochs=epochs, arch=arch, lr=lr, seed=seed, quiet=quiet)
    results = _summary(accs)
    results.attrs["stats"] = stats.as_lists()
    if save_to is not None and rank() == 0:
        _save(results, save_to, title=f"fold {fold}: {runs} run{'s' * (runs > 1)} x {epochs} epoch{'s' * (epochs > 1)}")
    return results
