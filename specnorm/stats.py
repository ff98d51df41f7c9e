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

On CUDA, an unmasked float32/float16/bfloat16 batch whose statistics are contiguous runs (`GLOBAL_AXES`,
`CHANNEL_AXES`) is folded in by two Triton kernels (`specnorm.kernel_moments`: one read of the batch,
then an in-place fold into the running state and NaN/Inf bookkeeping), with the same results;
`SPECNORM_TRITON=0` turns them off.
"""

import contextlib
import copy
import hashlib
import itertools
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from fastai.data.load import DataLoader as FastaiDataLoader
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_bytes
from torch.utils.data import DataLoader as TorchDataLoader
from torch.utils.data import DistributedSampler

from . import kernel_moments
from ._io import write_atomic
from .audio import AudioSpectrogram
from .distributed import STATUS_EVERY, agree, is_distributed, rank, shard, world_size
from .functional import CHANNEL_AXES, GLOBAL_AXES, combine_moments, moments, valid_mask
from .progress import progress_bar

__all__ = ["StatsRecorder", "compute_stats"]

_SETTINGS = ("sr", "n_fft", "hop_length", "win_length", "mel", "n_mels", "f_min", "f_max", "to_db", "mfcc", "n_mfcc")
_FORMAT = "specnorm.StatsRecorder/2"  # /2: the checksum covers the settings too
_MAX_DIMS = 8  # all_reduce exchanges batch shapes and red_dims in a fixed-size header


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


def _digest(tensors, config):
    "SHA-256 of everything `load` reads: the format, the settings `config` (a dict, without 'sha256') and the tensors."
    h = hashlib.sha256(_FORMAT.encode())
    h.update(json.dumps(config, sort_keys=True).encode())
    for k in sorted(tensors):
        h.update(f"{k}{tuple(tensors[k].shape)}{tensors[k].dtype}".encode())
        h.update(tensors[k].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype, bf16 too
    return h.hexdigest()


# all_reduce's header, float64 (exact for ints < 2**53): status, error value, ndim, shape, len(red_dims), red_dims,
# nan_policy, correction, state dtype, nobservations, nbatches, first NaN batch, its count, NaN/Inf count.
_H_STATUS, _H_VALUE, _H_NDIM, _H_SHAPE = 0, 1, 2, 3
_H_NRED = _H_SHAPE + _MAX_DIMS
_H_RED = _H_NRED + 1
_H_POLICY, _H_CORR, _H_DTYPE, _H_NOBS, _H_NBATCHES, _H_BAD = range(_H_RED + _MAX_DIMS, _H_RED + _MAX_DIMS + 6)
_H_SIZE = _H_BAD + 3
_POLICIES = ("raise", "omit")
_DTYPES = (torch.float64, torch.float32)
_LOCAL_ERRORS = {  # status code -> what a rank that failed its local check reports to every rank
    1: "its batches have {} dims, and all_reduce handles up to " + str(_MAX_DIMS),
    2: "its red_dims have {} entries, and all_reduce handles up to " + str(_MAX_DIMS),
    3: "its recorder failed a local check (the error is chained on that rank)",
}


def _header(rec):
    "(header, error): the fixed-size float64 header of `rec` for all_reduce; a failed local check is a status code."
    h = [0.0] * _H_SIZE
    try:
        shape, dims = list(rec.batch_shape or []), list(rec.red_dims)
        if len(shape) > _MAX_DIMS:
            h[_H_STATUS], h[_H_VALUE] = 1, len(shape)
            return h, None
        if len(dims) > _MAX_DIMS:
            h[_H_STATUS], h[_H_VALUE] = 2, len(dims)
            return h, None
        h[_H_NDIM], h[_H_SHAPE : _H_SHAPE + len(shape)] = len(shape), shape
        h[_H_NRED], h[_H_RED : _H_RED + len(dims)] = len(dims), dims
        h[_H_POLICY], h[_H_CORR] = _POLICIES.index(rec.nan_policy), float(rec.correction)
        h[_H_DTYPE] = _DTYPES.index(rec._state[0].dtype) if rec._state is not None else 0
        h[_H_NOBS], h[_H_NBATCHES] = rec.nobservations, rec.nbatches
        h[_H_BAD : _H_BAD + 3] = rec._bad.tolist() if rec._bad is not None else [-1, 0, 0]
    except Exception as e:  # any local failure must still reach the other ranks
        h = [0.0] * _H_SIZE
        h[_H_STATUS] = 3
        return h, e
    return h, None


def _check_headers(headers):
    """Validate the gathered headers: the same on every rank, so every rank raises the same error (none waits).

    Returns (red_dims, the batch shape of the first rank with data, the statistics' shape)."""
    ints = [[int(v) for v in h] for h in headers]
    failed = [(r, h[_H_STATUS], h[_H_VALUE]) for r, h in enumerate(ints) if h[_H_STATUS]]
    if failed:
        what = "; ".join(f"rank {r}: " + _LOCAL_ERRORS[code].format(v) for r, code, v in failed)
        raise ValueError(f"all_reduce: {len(failed)} rank(s) cannot take part ({what}); every rank raises this")
    for name, col, show in (
        ("nan_policy", _H_POLICY, lambda v: repr(_POLICIES[int(v)])),
        ("correction", _H_CORR, lambda v: f"{v:g}"),
        ("statistics dtype", _H_DTYPE, lambda v: str(_DTYPES[int(v)])),
    ):
        if len({h[col] for h in headers}) > 1:
            values = ", ".join(f"rank {r}: {show(h[col])}" for r, h in enumerate(headers))
            raise ValueError(f"all_reduce: the ranks' recorders differ in {name} ({values})")
    ranks = [r for r, h in enumerate(ints) if h[_H_NBATCHES]]
    if not ranks:
        raise RuntimeError("all_reduce: no process has seen any data")
    shapes = {r: tuple(h[_H_SHAPE : _H_SHAPE + h[_H_NDIM]]) for r, h in enumerate(ints) if r in ranks}
    ref = shapes[ranks[0]]
    dims = {}
    for r, h in enumerate(ints):
        raw = tuple(h[_H_RED : _H_RED + h[_H_NRED]])
        try:
            dims[r] = _resolve(raw, shapes.get(r, ref))
        except ValueError as e:
            raise ValueError(f"all_reduce: rank {r}'s {e}") from None
    if len(set(dims.values())) > 1:
        values = ", ".join(f"rank {r}: {d}" for r, d in dims.items())
        raise ValueError(f"all_reduce: the ranks' recorders differ in red_dims ({values})")
    red = dims[ranks[0]]
    stat_shapes = {r: _stat_shape(s, red) for r, s in shapes.items()}
    if len({len(s) for s in shapes.values()}) > 1 or len(set(stat_shapes.values())) > 1:
        values = ", ".join(f"rank {r}: {s}" for r, s in shapes.items())
        raise ValueError(f"all_reduce: the ranks' batch shapes differ on dims outside red_dims {red} ({values})")
    if _POLICIES[int(headers[0][_H_POLICY])] == "raise":
        for r, h in enumerate(ints):
            if h[_H_BAD + 2]:
                raise ValueError(
                    f"all_reduce: rank {r}'s batch {h[_H_BAD]} (counting from 0) holds {h[_H_BAD + 1]} NaN or Inf"
                    f" values ({h[_H_BAD + 2]} on that rank): clean the data, or use nan_policy='omit'"
                )
    return red, ref, stat_shapes[ranks[0]]


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
        omit = self.nan_policy == "omit"
        lay = self._kernel_layout(x, mask)
        if lay is not None:  # CUDA: two Triton kernels, in place (specnorm.kernel_moments)
            shape = _stat_shape(x.shape, self.red_dims)
            self._state, self._bad = kernel_moments.update_moments(
                x, lay, self._state, self._bad, self.nbatches, omit, shape
            )
            self.batch_shape = self.batch_shape or tuple(x.shape)
        else:
            self._update_eager(x, mask, omit)
        self.nbatches += 1
        self.nobservations += x.shape[0]
        return self

    def _kernel_layout(self, x, mask):
        "`kernel_moments.layout` of `x` when it takes the Triton kernels (unmasked, CUDA, same device), else None."
        if mask is not None or x.dtype not in kernel_moments.DTYPES:
            return None
        if (self._state is not None and x.device != self.device) or not kernel_moments.use_triton(x):
            return None
        return kernel_moments.layout(x.shape, self.red_dims)

    def _update_eager(self, x, mask, omit):
        "`functional.moments` and `combine_moments`, and the NaN/Inf bookkeeping: any device, mask, layout."
        batch, nonfinite = moments(x, self.red_dims, mask, omit_nonfinite=omit)
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
        """Fold the statistics of `other` into this recorder (exact, order-independent); returns `self`.

        The result keeps this recorder's `correction` and `nan_policy`. Recorders of different
        `nan_policy` merge only while the 'omit' one has left out no value (it then holds exactly what a
        'raise' recorder would); otherwise merging raises a ValueError, in either order, because the
        result could not honour both policies. Omitted counts of two 'omit' recorders add up.
        """
        if not isinstance(other, StatsRecorder):
            raise TypeError(f"can only merge a StatsRecorder, got {type(other).__name__}")
        if other._state is None:
            return self
        other._check()
        if self._state is not None:
            self._check()
        if self.nan_policy != other.nan_policy:
            if self.omitted or other.omitted:
                raise ValueError(
                    f"cannot merge a recorder with nan_policy={other.nan_policy!r} ({other.omitted} values omitted)"
                    f" into one with nan_policy={self.nan_policy!r} ({self.omitted} values omitted): the result"
                    " could not honour both; use the same nan_policy for both"
                )
        dims = _resolve(self.red_dims, other.batch_shape)
        if dims != other.red_dims:
            raise ValueError(f"cannot merge recorders over red_dims {self.red_dims} and {other.red_dims}")
        if self._state is None:
            state = copy.deepcopy({k: v for k, v in vars(other).items() if k not in ("correction", "nan_policy")})
            vars(self).update(state)
            self._bad = torch.tensor([-1, 0, other.omitted], device=self.device)
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
        of all the data, folded in rank order, as one process would compute them. Returns `self`.

        The ranks first exchange a fixed-size header (batch shape, red_dims, nan_policy, correction, dtype,
        counts, NaN/Inf counts, and whether the rank failed a local check). Every rank checks the same
        headers, so a mismatch, a NaN/Inf under 'raise' or a failed check on any rank raises the same
        ValueError, naming the ranks and their values, on every rank at once: none is left waiting in a
        collective. (A rank that never calls `all_reduce` still leaves the others waiting until the
        process group's timeout.)
        """
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("all_reduce needs torch.distributed: call torch.distributed.init_process_group first")
        world = dist.get_world_size(group)
        comm = (
            torch.device("cuda", torch.cuda.current_device())
            if dist.get_backend(group) == "nccl"
            else torch.device("cpu")
        )
        header, exc = _header(self)
        header = torch.tensor(header, dtype=torch.float64, device=comm)
        headers = [torch.empty_like(header) for _ in range(world)]
        dist.all_gather(headers, header, group=group)
        try:
            dims, batch_shape, stat_shape = _check_headers(torch.stack(headers).tolist())
        except ValueError as e:
            raise e from exc
        local = (
            torch.stack(self._state).to(comm)
            if self._state is not None
            else torch.zeros(3, *stat_shape, dtype=torch.float64, device=comm)
        )
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local, group=group)
        state = tuple(gathered[0])
        for part in gathered[1:]:
            state = _chan(state, tuple(part))
        device = self.device or comm
        headers = torch.stack(headers).long().tolist()
        self.red_dims, self.batch_shape = dims, batch_shape
        self._state = tuple(t.to(device) for t in state)
        self.nobservations = sum(h[_H_NOBS] for h in headers)
        self.nbatches = sum(h[_H_NBATCHES] for h in headers)
        self._bad = torch.tensor([-1, 0, sum(h[_H_BAD + 2] for h in headers)], device=device)
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
        omitted = state.get("omitted", 0)
        if not isinstance(omitted, int) or omitted < 0 or (omitted and state["nan_policy"] == "raise"):
            raise ValueError(
                f"StatsRecorder state: 'omitted' must be an int >= 0, and 0 with nan_policy='raise', got {omitted!r}"
                f" with nan_policy={state['nan_policy']!r}"
            )
        self.red_dims, self.correction, self.nan_policy = dims, state["correction"], state["nan_policy"]
        self.nobservations, self.nbatches = state["nobservations"], state["nbatches"]
        self.batch_shape = tuple(batch_shape)
        self.settings = dict(state.get("settings") or {})
        self._state = (count.clone(), mean.clone(), m2.clone())
        self._bad = torch.tensor([-1, 0, omitted], device=count.device)
        return self

    def save(self, path):
        """Write a safetensors file: float64 tensors, settings as JSON metadata, and a SHA-256 of both
        (`load` rejects any change). Written through a temporary file in the same folder, then renamed."""
        path = Path(path)
        state = self.state_dict()
        tensors = {k: state.pop(k).cpu().contiguous() for k in ("count", "mean", "m2")}
        state["sha256"] = _digest(tensors, state)
        if path.is_dir():
            raise IsADirectoryError(f"cannot write statistics to {path}: it is a folder; give a file name")
        data = save_bytes(tensors, metadata={"format": _FORMAT, "config": json.dumps(state)})
        write_atomic(path, lambda f: f.write(data))
        return path

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
        if meta.get("format") == "specnorm.StatsRecorder/1":
            raise ValueError(
                f"{path} was written by an earlier specnorm (format 'specnorm.StatsRecorder/1') whose checksum"
                " does not cover the settings, so it cannot be verified: compute the statistics again and save them"
            )
        if meta.get("format") != _FORMAT:
            raise ValueError(
                f"{path} is not a StatsRecorder file: its format is {meta.get('format')!r}, not {_FORMAT!r}"
            )
        try:
            state = json.loads(meta["config"])
        except (KeyError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: the settings metadata is missing or is not JSON ({e})") from e
        if not isinstance(state, dict) or state.pop("sha256", None) != _digest(tensors, state):
            raise ValueError(
                f"{path}: the statistics and settings do not match their SHA-256 checksum: the file was modified"
                " or corrupted"
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


def _chosen(n, fraction, seed, limit):
    "The sorted indices of a random `fraction` of `range(n)` drawn with `seed` (all for 1), at most `limit` of them."
    idxs = range(n) if fraction >= 1 else sorted(random.Random(seed).sample(range(n), max(1, round(fraction * n))))
    return list(idxs)[:limit]


@contextlib.contextmanager
def _validation_style(dl):
    "Load `dl`'s items as the validation split does: training-only random transforms (crops...) left out."
    ds = getattr(dl, "dataset", None)
    with ds.set_split_idx(1) if hasattr(ds, "set_split_idx") else contextlib.nullcontext():
        yield


def _subset(dl, fraction, seed, max_batches, group=None):
    """`(batches, how many, items)`: this rank's share of a random `fraction` of `dl`, at most `max_batches`.

    Items are chosen, then sharded, for a fastai loader or a map-style torch loader (only those are
    loaded); batches otherwise (every rank iterates them and keeps its share). `items` is the size of
    the loader's dataset (that every rank must agree on), or None."""
    if isinstance(dl, FastaiDataLoader) and dl.indexed and dl.n:
        # A loader over the chosen items only, in order: the others are never loaded or transformed,
        # and none is dropped (a training loader would shuffle and drop its last partial batch).
        idxs = shard(_chosen(dl.n, fraction, seed, max_batches and max_batches * (dl.bs or 1)), group)
        if not idxs:
            return [], 0, dl.n
        sub = FastaiDataLoader.new(
            dl, get_idxs=lambda: idxs, n=len(idxs), shuffle=False, drop_last=False, do_setup=False
        )
        return sub, len(sub), dl.n
    presharded = isinstance(getattr(dl, "sampler", None), DistributedSampler)
    if isinstance(dl, TorchDataLoader) and dl.batch_size and not presharded and hasattr(dl.dataset, "__getitem__"):
        n = len(dl.dataset)
        idxs = shard(_chosen(n, fraction, seed, max_batches and max_batches * dl.batch_size), group)
        sub = TorchDataLoader(
            dl.dataset,
            batch_size=dl.batch_size,
            sampler=idxs,
            num_workers=dl.num_workers,
            collate_fn=dl.collate_fn,
            pin_memory=dl.pin_memory,
        )
        return sub, len(sub), n
    n = len(dl) if hasattr(dl, "__len__") else None
    rng = random.Random(seed)
    if fraction >= 1:
        kept, total = dl, n
    elif n is None:
        kept, total = (b for b in dl if rng.random() < fraction), None
    else:
        keep = set(rng.sample(range(n), max(1, round(fraction * n))))
        kept, total = (b for i, b in enumerate(dl) if i in keep), len(keep)
    if max_batches is not None:
        kept, total = itertools.islice(kept, max_batches), max_batches if total is None else min(total, max_batches)
    if presharded or not is_distributed(group):
        return kept, total, None
    # Every rank iterates the batches (none can be skipped unread) and folds in every world-th one.
    r, world = rank(group), world_size(group)
    mine = (b for i, b in enumerate(kept) if i % world == r)
    return mine, None if total is None else len(range(r, total, world)), total


def _fold(batches, recorders, items, group):
    """Fold every batch into every recorder. Under a process group the ranks `agree` before the first
    batch (their loaders must hold as many `items`) and every `STATUS_EVERY` batches until all are done,
    so an error on one rank (a bad file) is raised on every rank."""
    distributed, it = is_distributed(group), iter(batches)
    error, done, step = None, False, 0
    while True:
        if distributed and step % STATUS_EVERY == 0:
            all_done, values = agree(error, done, -1 if items is None else items, group)
            if len(set(values)) > 1:
                raise ValueError(
                    f"the ranks' loaders differ: they hold {values} items (rank 0 to {len(values) - 1}); every "
                    "rank must build the same dataset, in the same order, for the statistics to be sharded"
                )
            if all_done:
                return
        if not done and error is None:
            try:
                b = next(it)
                x = b[0] if isinstance(b, (tuple, list)) else b
                mask = valid_mask(x)  # padded frames (`lengths`, `pad_before`) do not count
                for rec in recorders:
                    rec.update(x, mask=mask)
            except StopIteration:
                done = True
            except Exception as e:  # raised on every rank by the next `agree`
                error = e
        step += 1
        if not distributed:
            if error is not None:
                raise error
            if done:
                return


def _check_red_dims(red_dims):
    "`red_dims` as a list of tuples of ints (a single tuple gives one), or a ValueError naming it."
    if isinstance(red_dims, (tuple, list)) and red_dims and all(isinstance(d, int) for d in red_dims):
        return [tuple(red_dims)]
    if (
        not isinstance(red_dims, (tuple, list))
        or not red_dims
        or not all(isinstance(dims, (tuple, list)) and dims for dims in red_dims)
    ):
        raise ValueError(
            f"red_dims must be a tuple of dims such as (0, 2, 3), or a list of such tuples, got {red_dims!r}"
        )
    return [tuple(dims) for dims in red_dims]


@torch.no_grad()
def compute_stats(
    dl,
    red_dims=(GLOBAL_AXES, CHANNEL_AXES),
    fraction=1.0,
    max_batches=None,
    progress=True,
    seed=0,
    group=None,
    **kwargs,
):
    """One pass over `dl` (batch transforms applied) feeding one `StatsRecorder` per entry of `red_dims`.

    Padding does not count: batches carrying `lengths` (and `pad_before`), as `AudioToSpec` sets them on
    the spectrograms of padded clips, are folded in with `StatsRecorder.update(x, mask=valid_mask(x))`.

    The items of a fastai loader are read as the validation split reads them: training-only random
    transforms (`ResizeSignal`'s random crop, augmentations) are left out, so the statistics are the
    same from one call to the next, whatever the batch size, order or number of processes.

    Under `torch.distributed` (a process group of several ranks in `group`), each rank reads only its
    share (`specnorm.distributed.shard`) of the chosen items (drawn identically on every rank from
    `seed`) and the recorders are all-reduced: every rank gets the statistics of all the chosen items,
    equal to one process's. The loader must be the same on every rank (not a per-rank one), except a
    torch loader with a `DistributedSampler`, which is taken as already sharded. Ranks exchange a status
    every few batches, so one that fails makes every rank raise (`RankError` on the others).

    Args:
        dl: a fastai `DataLoader` (e.g. `dls.train`), a torch `DataLoader`, or any iterable of batches
            (tensors, or tuples whose first element is the input).
        red_dims: a tuple of dims per recorder (a single tuple of ints gives one recorder).
        fraction (float): share of the data to read, drawn at random with `seed`: items of a fastai or
            map-style torch loader (only those are loaded), batches of any other iterable. 0.1-0.2 is
            usually enough.
        max_batches (int): stop after that many batches (of the whole pass, over all ranks).
        progress (bool): show a fastprogress bar (on rank 0 only).
        seed (int): seed of the `fraction` subset.
        group: the process group (default: the default group, when initialized).
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
    red_dims = _check_red_dims(red_dims)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if max_batches is not None and (
        not isinstance(max_batches, int) or isinstance(max_batches, bool) or max_batches < 1
    ):
        raise ValueError(f"max_batches must be a positive int (or None for all), got {max_batches!r}")
    recorders = [StatsRecorder(dims, **kwargs) for dims in red_dims]
    batches, total, items = _subset(dl, fraction, seed, max_batches, group)
    batches = progress_bar(batches, total=total, label="statistics", unit="batches", show=progress and rank(group) == 0)
    with _validation_style(dl):
        _fold(batches, recorders, items, group)
    if is_distributed(group):
        _, counts = agree(None, True, recorders[0].nbatches, group)
        if sum(counts) == 0:
            raise ValueError("compute_stats read no batches on any rank: the DataLoader is empty")
        for rec in recorders:
            rec.all_reduce(group)
    elif recorders[0].nbatches == 0:
        raise ValueError("compute_stats read no batches: the DataLoader is empty")
    return recorders
