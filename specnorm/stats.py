"""Exact streaming normalization statistics: `StatsRecorder` and `compute_stats`.

The mean and standard deviation of a training set, global or per frequency channel, folded in one
mini-batch at a time. Each batch is reduced to (count, mean, M2 = sum of squared deviations) by the
corrected two-pass algorithm (Chan, Golub & LeVeque, "Algorithms for computing the sample variance",
The American Statistician 37(3), 1983): values are centred on the batch's own mean in its dtype,
summed, and the sums corrected in float64. Batches, recorders and processes are combined in float64
with the pairwise update of Chan, Golub & LeVeque ("Updating formulae and a pairwise algorithm for
computing sample variances", Stanford CS report STAN-CS-79-773, 1979):

    n = na + nb,   mean = ma + (mb - ma) nb / n,   M2 = M2a + M2b + (mb - ma)^2 na nb / n

so the result is a float64 two-pass over all the data, whatever the batch sizes, lengths, order or
merge tree. (The recorder of the reference fastai audio workflow pools per-batch means and unbiased
stds weighted by batch items, in float32: it drifts when batches differ in size or length.)

The per-batch math is `specnorm.functional.moments` (values scaled by a power of two first, so float32
data of any finite magnitude, denormals to 3e38, give exact statistics; 32/64-bit integers are read as
float64) and `specnorm.functional.combine_moments`.

No host synchronisation in `update`, from the first call on: it never reads a tensor value on the host,
so on a GPU it only queues kernels. NaN/Inf values are therefore counted on the device, batch by batch, and with
`nan_policy='raise'` (the default) the ValueError naming the first offending batch and the counts is
raised when statistics are next read (`mean`, `std`, `var`, `state_dict`, `save`, `merge`,
`all_reduce`), not inside `update`. `nan_policy='omit'` leaves non-finite values out of every count.
"""

import copy
import hashlib
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from fastai.data.load import DataLoader as FastaiDataLoader
from fastprogress.fastprogress import progress_bar
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .audio import AudioSpectrogram
from .functional import CHANNEL_AXES, GLOBAL_AXES, combine_moments, moments

__all__ = ["StatsRecorder", "compute_stats"]

_SETTINGS = ("sr", "n_fft", "hop_length", "win_length", "mel", "n_mels", "f_min", "f_max", "to_db", "mfcc", "n_mfcc")
_FORMAT = "specnorm.StatsRecorder/1"
_MAX_DIMS = 8  # all_reduce exchanges batch shapes in a fixed-size integer header


_chan = combine_moments  # Chan et al.'s pairwise update of float64 (count, mean, M2) triples


def _check_config(red_dims, correction, nan_policy):
    dims = (red_dims,) if isinstance(red_dims, int) else tuple(red_dims)
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise ValueError(f"red_dims must be a non-empty tuple of ints, got {red_dims!r}")
    if len(set(dims)) != len(dims):
        raise ValueError(f"red_dims {dims} repeats a dim")
    if nan_policy not in ("raise", "omit"):
        raise ValueError(f"nan_policy must be 'raise' or 'omit', got {nan_policy!r}")
    if not isinstance(correction, (int, float)) or isinstance(correction, bool) or not 0 <= correction < math.inf:
        raise ValueError(f"correction must be a number >= 0 (0: population, 1: unbiased), got {correction!r}")
    return dims


def _resolve(dims, shape):
    "`dims` as sorted non-negative dims of a batch of `shape`, or a ValueError naming both."
    ndim = len(shape)
    bad = [d for d in dims if not -ndim <= d < ndim]
    if bad:
        raise ValueError(f"red_dims {dims} do not fit a batch of shape {tuple(shape)}: dim {bad[0]} is out of range")
    resolved = tuple(sorted(d % ndim for d in dims))
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"red_dims {dims} name the same dim twice for a batch of shape {tuple(shape)}")
    return resolved


def _stat_shape(batch_shape, dims):
    return tuple(1 if i in dims else n for i, n in enumerate(batch_shape))


def _plain(v):
    "A numpy or torch scalar as a Python number (JSON-ready); anything else unchanged."
    if isinstance(v, (np.generic, np.ndarray, torch.Tensor)) and np.prod(v.shape) == 1:
        return v.item()
    return v


def _digest(tensors):
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(f"{k}{tuple(tensors[k].shape)}{tensors[k].dtype}".encode())
        h.update(tensors[k].contiguous().numpy().tobytes())
    return h.hexdigest()


class StatsRecorder:
    """Exact mean, variance and std of every batch seen, reduced over `red_dims`.

    Args:
        red_dims (tuple of int): dims to reduce. `GLOBAL_AXES = (0, 2, 3)` on `[batch, channel, freq, time]`
            spectrograms gives one global statistic (channels of size 1), `CHANNEL_AXES = (0, 1, 3)` one per
            frequency row. `axes=` is accepted as an alias (the transforms' name for the same idea).
        correction (number): `var = M2 / (count - correction)`; 0 (default) is the population variance over
            every element seen, 1 the unbiased one.
        nan_policy (str): `'raise'` (a ValueError when statistics are read) or `'omit'` (NaN/Inf left out).

    Attributes:
        mean, var, std: float32 tensors on the data's device, of the batch's rank with size 1 on `red_dims`.
        count: int64 tensor of the same shape, elements behind each statistic.
        nobservations: batch items seen; nbatches: batches seen; omitted: NaN/Inf values left out.
        settings: spectrogram settings (`sr`, `n_fft`, `mel`, ...) of the first `AudioSpectrogram` batch.

    Shape:
        `update(x)` with `x` of any rank; batches may differ on `red_dims` (size, length) but not elsewhere.

    Example:
        >>> import torch
        >>> from specnorm.stats import StatsRecorder
        >>> rec = StatsRecorder(red_dims=(0, 1, 3))
        >>> for n in (3, 5):
        ...     _ = rec.update(torch.randn(n, 1, 4, 10) * 2 + 7)  # returns the recorder
        >>> rec.mean.shape, rec.std.shape, rec.nobservations, int(rec.count.flatten()[0])
        (torch.Size([1, 1, 4, 1]), torch.Size([1, 1, 4, 1]), 8, 80)
    """

    def __init__(
        self,
        red_dims: Sequence[int] = GLOBAL_AXES,
        correction: float = 0,
        nan_policy: str = "raise",
        axes: Sequence[int] | None = None,
    ):
        if axes is not None:  # the transforms' name for the same idea
            red_dims = axes
        self.red_dims = _check_config(red_dims, correction, nan_policy)
        self.correction, self.nan_policy = correction, nan_policy
        self.nobservations, self.nbatches, self.batch_shape, self.settings = 0, 0, None, {}
        self._state = None  # float64 (count, mean, M2), statistic-shaped, on the data's device
        self._bad = None  # int64 [first batch with NaN/Inf or -1, its NaN/Inf count, NaN/Inf count of all batches]

    def __repr__(self):
        return (
            f"StatsRecorder(red_dims={self.red_dims}, correction={self.correction}, nan_policy={self.nan_policy!r},"
            f" nbatches={self.nbatches}, nobservations={self.nobservations})"
        )

    # -- folding in data ------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> "StatsRecorder":
        "Fold in the batch `x`, only where the boolean `mask` (broadcastable to `x`) is true if given."
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"update takes a tensor, got {type(x).__name__}")
        if self.batch_shape is None:
            self.red_dims = _resolve(self.red_dims, x.shape)
            meta = {k: _plain(v) for k, v in getattr(x, "__dict__", {}).items() if k in _SETTINGS}
            self.settings = {k: v for k, v in meta.items() if isinstance(v, (bool, int, float, str, type(None)))}
        elif x.ndim != len(self.batch_shape) or _stat_shape(x.shape, self.red_dims) != self._shape:
            raise ValueError(
                f"batch {self.nbatches} of shape {tuple(x.shape)} does not fit the earlier batches of "
                f"shape {tuple(self.batch_shape)}: only red_dims {self.red_dims} may differ"
            )
        if x.numel() == 0:
            raise ValueError(f"batch {self.nbatches} of shape {tuple(x.shape)} is empty")
        x = x.as_subclass(torch.Tensor)
        if mask is not None:
            mask = torch.as_tensor(mask, device=x.device)
            if mask.dtype != torch.bool:
                raise TypeError(f"mask must be a boolean tensor, got dtype {mask.dtype}")
            try:
                fits = torch.broadcast_shapes(mask.shape, x.shape) == x.shape
            except RuntimeError:
                fits = False
            if not fits:
                raise ValueError(
                    f"mask of shape {tuple(mask.shape)} does not broadcast to the batch's shape {tuple(x.shape)}"
                )
        batch, nonfinite = moments(x, self.red_dims, mask, omit_nonfinite=self.nan_policy == "omit")
        if self._state is None:
            self.batch_shape, self._state = tuple(x.shape), tuple(batch)
            zero = torch.zeros((), dtype=torch.int64, device=x.device)  # made on the device: no host-to-device copy
            self._bad = torch.stack([zero - 1, zero, zero])
        else:
            self._state = tuple(combine_moments(self._state, tuple(t.to(self.device) for t in batch)))
        nonfinite = nonfinite.to(self.device)
        first = (self._bad[0] < 0) & (nonfinite > 0)
        self._bad = torch.stack(
            [
                torch.where(first, self.nbatches, self._bad[0]),
                torch.where(first, nonfinite, self._bad[1]),
                self._bad[2] + nonfinite,
            ]
        )
        self.nbatches += 1
        self.nobservations += x.shape[0]
        return self

    # -- reading statistics ---------------------------------------------------------------------
    @property
    def _shape(self):
        return _stat_shape(self.batch_shape, self.red_dims)

    @property
    def device(self):
        return None if self._state is None else self._state[0].device

    def _check(self):
        "Raise for a recorder without data, or one that saw NaN/Inf under nan_policy='raise' (a host sync)."
        if self._state is None:
            raise RuntimeError("StatsRecorder has seen no data: call update(batch) (or compute_stats) first")
        if self.nan_policy == "raise":
            first, n_first, total = self._bad.tolist()
            if total:
                raise ValueError(
                    f"batch {first} (counting from 0) holds {n_first} NaN or Inf values ({total} in the "
                    f"{self.nbatches} batches seen): clean the data, or use nan_policy='omit' to leave "
                    "them out"
                )

    def _var64(self):
        self._check()
        count, mean, m2 = self._state
        dof = count - self.correction
        if (dof <= 0).any():
            raise ValueError(
                f"{int((dof <= 0).sum())} of the {count.numel()} statistics have "
                f"{int(count.min())} elements, too few for correction={self.correction} (all masked?)"
            )
        if not torch.isfinite(m2).all():  # finite data whose variance float64 cannot hold (|values| ~ 1e154 and up)
            raise ValueError(
                "the variance of the data seen exceeds the float64 range (values of magnitude ~1e154 or more): "
                "rescale the data before recording statistics"
            )
        return mean, m2 / dof

    @property
    def mean(self):
        return self._var64()[0].float()

    @property
    def var(self):
        return self._var64()[1].float()

    @property
    def std(self):
        return self._var64()[1].sqrt().float()

    @property
    def count(self):
        if self._state is None:
            raise RuntimeError("StatsRecorder has seen no data: call update(batch) (or compute_stats) first")
        return self._state[0].long()

    @property
    def omitted(self):
        return 0 if self._bad is None else int(self._bad[2])

    # -- merging ----------------------------------------------------------------------------------
    def merge(self, other):
        "Fold the statistics of `other` into this recorder (exact, order-independent); returns `self`."
        if not isinstance(other, StatsRecorder):
            raise TypeError(f"can only merge a StatsRecorder, got {type(other).__name__}")
        if other._state is None:
            return self
        other._check()
        dims = _resolve(self.red_dims, other.batch_shape)
        if dims != other.red_dims:
            raise ValueError(f"cannot merge recorders over red_dims {self.red_dims} and {other.red_dims}")
        if self._state is None:
            state = copy.deepcopy({k: v for k, v in vars(other).items() if k not in ("correction", "nan_policy")})
            vars(self).update(state)
            return self
        self._check()
        if self._shape != other._shape:
            raise ValueError(
                f"cannot merge statistics of shape {self._shape} (batches {self.batch_shape}) with "
                f"statistics of shape {other._shape} (batches {other.batch_shape})"
            )
        self._state = _chan(self._state, tuple(t.to(self.device) for t in other._state))
        self._bad = torch.cat([self._bad[:2], self._bad[2:] + other._bad[2:].to(self.device)])  # omitted counts add
        self.nbatches += other.nbatches
        self.nobservations += other.nobservations
        self.settings = self.settings or dict(other.settings)
        return self

    def __add__(self, other):
        if not isinstance(other, StatsRecorder):
            return NotImplemented
        return copy.deepcopy(self).merge(other)

    def __radd__(self, other):  # lets sum(recorders) start from 0
        return copy.deepcopy(self) if isinstance(other, int) and other == 0 else NotImplemented

    def all_reduce(self, group=None):
        """Combine the recorders of every process in `group` (gloo or nccl): each rank gets the statistics
        of all the data, folded in rank order, as one process would compute them. Returns `self`."""
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("all_reduce needs torch.distributed: call torch.distributed.init_process_group first")
        world = dist.get_world_size(group)
        device = self.device or (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend(group) == "nccl"
            else torch.device("cpu")
        )
        shape = list(self.batch_shape or [])
        if len(shape) > _MAX_DIMS:
            raise ValueError(f"all_reduce handles batches of up to {_MAX_DIMS} dims, not {len(shape)}")
        bad = self._bad.tolist() if self._bad is not None else [-1, 0, 0]
        header = torch.tensor(
            [len(shape), *shape, *[0] * (_MAX_DIMS - len(shape)), self.nobservations, self.nbatches, *bad],
            device=device,
        )
        headers = [torch.empty_like(header) for _ in range(world)]
        dist.all_gather(headers, header, group=group)
        headers = torch.stack(headers).tolist()
        # Every rank sees the same headers, so every rank raises the same error: none is left waiting.
        ranks = [r for r, h in enumerate(headers) if h[0] and h[_MAX_DIMS + 2]]
        if not ranks:
            raise RuntimeError("all_reduce: no process has seen any data")
        shapes = {r: tuple(headers[r][1 : 1 + headers[r][0]]) for r in ranks}
        dims = _resolve(self.red_dims, shapes[ranks[0]])
        stat_shapes = {r: _stat_shape(s, dims) for r, s in shapes.items()}
        if len(set(stat_shapes.values())) > 1:
            raise ValueError(
                f"all_reduce: the ranks' batch shapes do not fit each other on dims outside {dims}: {shapes}"
            )
        if self.nan_policy == "raise":
            for r, h in enumerate(headers):
                if h[-1]:
                    raise ValueError(
                        f"all_reduce: rank {r}'s batch {h[-3]} holds {h[-2]} NaN or Inf values ({h[-1]} on that rank)"
                    )
        stat_shape = stat_shapes[ranks[0]]
        local = (
            torch.stack(self._state)
            if self._state is not None
            else torch.zeros(3, *stat_shape, dtype=torch.float64, device=device)
        )
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local, group=group)
        state = tuple(gathered[0])
        for part in gathered[1:]:
            state = _chan(state, tuple(part))
        self.red_dims, self.batch_shape, self._state = dims, shapes[ranks[0]], state
        self.nobservations = sum(h[_MAX_DIMS + 1] for h in headers)
        self.nbatches = sum(h[_MAX_DIMS + 2] for h in headers)
        self._bad = torch.tensor([-1, 0, sum(h[-1] for h in headers)], device=device)
        return self

    # -- persistence ------------------------------------------------------------------------------
    def state_dict(self):
        "Statistics (float64 `count`, `mean`, `m2`) and settings, for `load_state_dict`."
        self._check()
        count, mean, m2 = (t.clone() for t in self._state)
        return dict(
            count=count,
            mean=mean,
            m2=m2,
            red_dims=list(self.red_dims),
            correction=self.correction,
            nan_policy=self.nan_policy,
            nobservations=self.nobservations,
            nbatches=self.nbatches,
            batch_shape=list(self.batch_shape),
            settings=dict(self.settings),
            omitted=self.omitted,
        )

    def load_state_dict(self, state):
        "Restore a `state_dict`, after checking its keys, shapes, dtypes and values."
        keys = (
            "count",
            "mean",
            "m2",
            "red_dims",
            "correction",
            "nan_policy",
            "nobservations",
            "nbatches",
            "batch_shape",
        )
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"StatsRecorder state lacks {', '.join(missing)}")
        dims = _check_config(state["red_dims"], state["correction"], state["nan_policy"])
        batch_shape = state["batch_shape"]
        if not (isinstance(batch_shape, (list, tuple)) and all(isinstance(n, int) and n > 0 for n in batch_shape)):
            raise ValueError(f"batch_shape must be a list of positive ints, got {batch_shape!r}")
        dims = _resolve(dims, batch_shape)
        shape = _stat_shape(batch_shape, dims)
        for k in ("count", "mean", "m2"):
            t = state[k]
            if not isinstance(t, torch.Tensor) or t.dtype != torch.float64 or tuple(t.shape) != shape:
                got = f"{t.dtype} tensor of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(
                    f"StatsRecorder state: {k!r} must be a float64 tensor of shape {shape} "
                    f"(batches {tuple(batch_shape)} reduced over {dims}), got a {got}"
                )
        count, mean, m2 = state["count"], state["mean"], state["m2"]
        if not (count.isfinite().all() and (count >= 0).all() and (count == count.round()).all()):
            raise ValueError("StatsRecorder state: 'count' must hold non-negative whole numbers")
        if not mean.isfinite().all():
            raise ValueError(f"StatsRecorder state: 'mean' holds {int((~mean.isfinite()).sum())} NaN or Inf values")
        if not (m2.isfinite().all() and (m2 >= 0).all()):
            raise ValueError("StatsRecorder state: 'm2' (sums of squared deviations) must be finite and >= 0")
        for k in ("nobservations", "nbatches"):
            if not isinstance(state[k], int) or state[k] < 0:
                raise ValueError(f"StatsRecorder state: {k!r} must be an int >= 0, got {state[k]!r}")
        self.red_dims, self.correction, self.nan_policy = dims, state["correction"], state["nan_policy"]
        self.nobservations, self.nbatches = state["nobservations"], state["nbatches"]
        self.batch_shape = tuple(batch_shape)
        self.settings = dict(state.get("settings") or {})
        self._state = (count.clone(), mean.clone(), m2.clone())
        self._bad = torch.tensor([-1, 0, int(state.get("omitted", 0))], device=count.device)
        return self

    def save(self, path):
        "Write a safetensors file: float64 tensors, settings as JSON metadata, a SHA-256 of the tensors."
        state = self.state_dict()
        tensors = {k: state.pop(k).cpu().contiguous() for k in ("count", "mean", "m2")}
        state["sha256"] = _digest(tensors)
        save_file(tensors, str(path), metadata={"format": _FORMAT, "config": json.dumps(state)})
        return Path(path)

    @classmethod
    def load(cls, path, device="cpu"):
        "Read a file written by `save` (nothing is unpickled), checking it, onto `device`."
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"statistics file not found: {path}")
        try:
            with safe_open(str(path), "pt") as f:
                meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from e
        if meta.get("format") != _FORMAT:
            raise ValueError(
                f"{path} is not a StatsRecorder file: its format is {meta.get('format')!r}, not {_FORMAT!r}"
            )
        try:
            state = json.loads(meta["config"])
        except (KeyError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: the settings metadata is missing or is not JSON ({e})") from e
        if not isinstance(state, dict) or state.pop("sha256", None) != _digest(tensors):
            raise ValueError(
                f"{path}: the statistics do not match their SHA-256 checksum: the file was modified or corrupted"
            )
        state.update({k: t.to(device) for k, t in tensors.items()})
        return cls().load_state_dict(state)

    # -- plotting -------------------------------------------------------------------------------
    def frequencies(self):
        "Centre frequency in Hz of each frequency row, when the statistics are per row of spectrogram batches."
        kept = [i for i, n in enumerate(self._shape) if n > 1]
        if "sr" not in self.settings or len(self.batch_shape) != 4 or kept != [2]:
            return None
        return AudioSpectrogram(torch.zeros(1, self._shape[2], 1), **self.settings).frequencies()

    def plot(self, ax=None, figsize=(6, 3)):
        "Per-channel statistics: mean with a +-std band over frequency (Hz when known); global ones: the two numbers."
        import matplotlib.pyplot as plt

        mean, std = self.mean.cpu().numpy(), self.std.cpu().numpy()
        ax = ax if ax is not None else plt.subplots(figsize=figsize)[1]
        unit = " (dB)" if self.settings.get("to_db") else ""
        if mean.size == 1:
            m, s = float(mean.flat[0]), float(std.flat[0])
            ax.errorbar([0], [m], yerr=[s], fmt="o", capsize=10)
            ax.set_xticks([])
            ax.set_ylabel(f"value{unit}")
            ax.set_title(f"global: mean {m:.4g}, std {s:.4g}")
            return ax
        freqs, width = self.frequencies(), [n for n in mean.shape if n > 1][-1]
        means, stds = mean.reshape(-1, width), std.reshape(-1, width)  # one line per leading kept index
        x = freqs if freqs is not None else np.arange(width)
        for i, (m, s) in enumerate(zip(means, stds)):
            ax.plot(x, m, lw=1, label=f"mean {i}" if len(means) > 1 else "mean")
            ax.fill_between(x, m - s, m + s, alpha=0.3, label="+-std" if i == 0 else None)
        ax.set_xlabel("frequency (Hz)" if freqs is not None else "statistic index")
        ax.set_ylabel(f"value{unit}")
        ax.legend()
        return ax


def _subset(dl, fraction, seed):
    "(batches, how many) of `dl`: a random `fraction` of a fastai loader's items, or of other loaders' batches."
    n = len(dl) if hasattr(dl, "__len__") else None
    rng = random.Random(seed)
    if isinstance(dl, FastaiDataLoader) and dl.indexed and dl.n:
        # A loader over the chosen items only, in order: the others are never loaded or transformed,
        # and none is dropped (a training loader would shuffle and drop its last partial batch).
        idxs = sorted(rng.sample(range(dl.n), max(1, round(min(fraction, 1) * dl.n))))
        sub = FastaiDataLoader.new(
            dl, get_idxs=lambda: idxs, n=len(idxs), shuffle=False, drop_last=False, do_setup=False
        )
        return sub, len(sub)
    if fraction >= 1:
        return dl, n
    if n is None:
        return (b for b in dl if rng.random() < fraction), None
    keep = set(rng.sample(range(n), max(1, round(fraction * n))))
    return (b for i, b in enumerate(dl) if i in keep), len(keep)


@torch.no_grad()
def compute_stats(
    dl, red_dims=(GLOBAL_AXES, CHANNEL_AXES), fraction=1.0, max_batches=None, progress=True, seed=0, **kwargs
):
    """One pass over `dl` (batch transforms applied) feeding one `StatsRecorder` per entry of `red_dims`.

    Args:
        dl: a fastai `DataLoader` (e.g. `dls.train`), a torch `DataLoader`, or any iterable of batches
            (tensors, or tuples whose first element is the input).
        red_dims: a tuple of dims per recorder (a single tuple of ints gives one recorder).
        fraction (float): share of the data to read, drawn at random with `seed`: items of a fastai
            loader (only those are loaded), batches of any other iterable. 0.1-0.2 is usually enough.
        max_batches (int): stop after that many batches.
        progress (bool): show a fastprogress bar.
        **kwargs: passed to each `StatsRecorder` (`correction`, `nan_policy`).

    Returns:
        The list of recorders, in the order of `red_dims`.

    Example:
        >>> import torch
        >>> from specnorm.stats import compute_stats
        >>> batches = [torch.randn(4, 1, 8, 20) for _ in range(5)]
        >>> glob, chan = compute_stats(batches, progress=False)
        >>> glob.mean.shape, chan.mean.shape, glob.nbatches
        (torch.Size([1, 1, 1, 1]), torch.Size([1, 1, 8, 1]), 5)
    """
    if red_dims and all(isinstance(d, int) for d in red_dims):
        red_dims = [red_dims]
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    recorders = [StatsRecorder(dims, **kwargs) for dims in red_dims]
    batches, total = _subset(dl, fraction, seed)
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    for i, b in enumerate(progress_bar(batches, total=total or "noinfer", leave=False) if progress else batches):
        if max_batches is not None and i >= max_batches:
            break
        x = b[0] if isinstance(b, (tuple, list)) else b
        for rec in recorders:
            rec.update(x)
    if not recorders or recorders[0].nbatches == 0:
        raise ValueError("compute_stats read no batches: the DataLoader is empty (or red_dims is empty)")
    return recorders
