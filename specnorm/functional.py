"""The math of specnorm as pure torch functions: no fastai import, no host reads, any device.

This is the torchaudio split: `specnorm.functional` holds the computations, and the fastai transforms
(`SpecNormalize`, `InstanceSpecNorm`, `SlidingSpecNorm`, `PCEN`, `AudioNormalize`, ...) and
`StatsRecorder` are thin layers over them that add type dispatch, metadata and statistics handling.
Importing this module imports torch and numpy only.

- Standardization with given statistics (`normalize`, `denormalize`, `affine_params`, `affine`): the
  affine `x * (1 / std) + (-mean / std)` in one pass over the data, with std floored relative to |mean|
  (`floor_std`, the one floor rule, also used by the drift monitor).
- Statistics-free normalization: `instance_norm` (per-utterance CMVN), `sliding_norm` (Kaldi's
  `apply-cmvn-sliding`), `pcen` (Wang et al., 2017, as `librosa.pcen`), and for waveforms `standardize`
  and `short_time_rms`.
- Exact statistics: `moments` (count, mean, M2 of a batch, float64) and `combine_moments` (the pairwise
  update of Chan, Golub & LeVeque, 1979), and `gaussian_kl`.
- `FiniteCheck`: deferred NaN/Inf detection. No function here raises on NaN or Inf (that would read a
  value on the host, a device sync): NaN/Inf in the input give NaN/Inf in the output. The transforms
  feed their outputs to a `FiniteCheck`, which counts bad batches on the device and raises in `check()`.

No function reads a tensor value on the host (no `.item()`, `bool(t)`, `.cpu()`, data-dependent Python
branch): on a GPU they only queue kernels. Host-side checks look at shapes, dtypes and arguments only.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AUDIO_SILENCE_EPS",
    "CHANNEL_AXES",
    "GLOBAL_AXES",
    "INSTANCE_EPS",
    "PCEN_DEFAULTS",
    "SPEC_STD_EPS",
    "FiniteCheck",
    "affine",
    "affine_layout",
    "affine_params",
    "check_axes",
    "check_eps",
    "combine_moments",
    "count_nonfinite",
    "denormalize",
    "floor_std",
    "gaussian_kl",
    "has_padding",
    "instance_norm",
    "lengths_to_mask",
    "moments",
    "normalize",
    "padding_of",
    "pcen",
    "pcen_smoothing_coef",
    "short_time_rms",
    "sliding_norm",
    "standardize",
    "valid_mask",
    "window_bounds",
]

# -- constants: one home each ------------------------------------------------------------------------
GLOBAL_AXES = (0, 2, 3)
"Reduced dims of `[B, C, F, T]` batches for one statistic per channel (global for mono spectrograms)."
CHANNEL_AXES = (0, 1, 3)
"Reduced dims of `[B, C, F, T]` batches for one statistic per frequency row (CMVN)."

# The fused affine's rounding error is about one float32 ulp of |mean| / std, so std is floored
# relative to |mean|: with 1e-3 the error stays below ~1e-4 (in units of std) and a constant dB row
# maps to ~0 instead of amplified rounding noise. For dB data it is a floor of 0.1 dB at -100 dB.
SPEC_STD_EPS = 1e-3
# An item (or channel) with std <= 1e-6 * max(1, |mean|) is silence: -120 dBFS, under the quantization
# noise of 16-bit audio (~-101 dBFS, which is normalized like any signal) and far above float32 rounding.
AUDIO_SILENCE_EPS = 1e-6
# Absolute floor on the std of per-clip and sliding statistics, in input units (Kaldi floors the
# variance at 1e-10, i.e. std at 1e-5).
INSTANCE_EPS = 1e-5
# Sliding windows: 300 frames (3 s at a 10 ms hop), and Kaldi's --min-cmn-window for causal windows.
SLIDING_WINDOW = 300
MIN_WINDOW = 100
# `affine` fuses its pass with batch norm only where each scale covers at least this many contiguous values:
# below, the kernel's per-channel cost dominates (one scale per value ran 15x slower than the multiply-add;
# from 16 frames per row on, the fused pass was the faster, on the CPU).
AFFINE_MIN_RUN = 16
# librosa.pcen's defaults (librosa 0.11).
PCEN_DEFAULTS = dict(sr=22050, hop_length=512, gain=0.98, bias=2.0, power=0.5, time_constant=0.4, eps=1e-6)


def _kernel_affine():
    "`specnorm.kernel_affine`, imported on the first CUDA tensor (it imports triton; importing specnorm does not)."
    from . import kernel_affine

    return kernel_affine


# -- argument checks (host-side, on arguments only) --------------------------------------------------
def check_eps(eps: float, name: str = "eps", positive: bool = False) -> float:
    """`eps` as a float, or a ValueError naming it: finite and >= 0 (> 0 with `positive`).

    Example:
        >>> from specnorm.functional import check_eps
        >>> check_eps(1e-3)
        0.001
    """
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {eps!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {eps!r}")
    return value


def check_axes(axes: int | Sequence[int], ndim: int = 4, allowed: Sequence[int] | None = None) -> tuple[int, ...]:
    """`axes` as sorted distinct non-negative dims of an `ndim`-dim tensor, or a ValueError naming them.

    Each axis must lie in `[-ndim, ndim)`; `allowed` restricts the resolved dims further.

    Example:
        >>> from specnorm.functional import check_axes
        >>> check_axes((-1, 2)), check_axes(3)
        ((2, 3), (3,))
    """
    given = (axes,) if isinstance(axes, int) else tuple(axes) if isinstance(axes, (tuple, list)) else None
    if not given or not all(isinstance(a, int) and not isinstance(a, bool) for a in given):
        raise ValueError(f"axes must be a non-empty tuple of ints, got {axes!r}")
    bad = [a for a in given if not -ndim <= a < ndim]
    if bad:
        raise ValueError(f"axes {axes!r}: {bad[0]} is not a dim of a {ndim}-dim tensor (valid: {-ndim}..{ndim - 1})")
    dims = tuple(sorted({a % ndim for a in given}))
    if len(dims) != len(given):
        raise ValueError(f"axes {axes!r} name the same dim twice")
    if allowed is not None and not set(dims) <= set(allowed):
        raise ValueError(f"axes {axes!r} must be among the dims {tuple(allowed)}")
    return dims


def _float(x: Tensor) -> Tensor:
    "`x` as a plain floating tensor: half precision and small ints as float32, 32/64-bit ints as float64 (exact)."
    x = x.as_subclass(Tensor)
    if x.dtype in (torch.int32, torch.int64, torch.uint32, torch.uint64):
        return x.double()
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def _accumulator_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64


def _to(t: Tensor, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    "`t` on `like`'s device: a host-to-device copy does not wait for the device (no sync); copies to the CPU do."
    return t.to(device=like.device, dtype=dtype or t.dtype, non_blocking=like.device.type != "cpu")


# -- deferred NaN/Inf detection ---------------------------------------------------------------------------
class FiniteCheck:
    """Deferred NaN/Inf detection for a transform: device-side marks per batch, read only in `check()`.

    `update(y)` queues one reduction per batch: with `reduction='minmax'` (the default) `torch.aminmax(y)`,
    whose two values are finite exactly when `y` holds no NaN and no Inf (no sum that could overflow on large
    finite values); with `reduction='sum'`, `y.sum()`, about three times cheaper on the CPU, for outputs whose
    magnitude is known to stay far below float32's range (standardized values): its sum is non-finite when
    `y` holds NaN or Inf, or finite values whose sum overflows (magnitudes near 3.4e38 / their count), and
    the message says both. Either way no host read, no device sync.
    Marks are folded into a first-bad-batch index and a bad-batch count every `fold_every` batches
    (a few small kernels). `check()` reads them (one host sync, where training already syncs: the
    `CheckFinite` callback calls it after each epoch and validation) and raises a `ValueError` naming the
    transform, the number of bad batches, the first of them and its shape; then it starts over.

    Args:
        who (str): the transform's name, for the message.
        what (str): what a bad batch holds, for the message. NaN or Inf outputs come from NaN or Inf
            inputs, or from finite values too large for the output's dtype (e.g. 3e38 minus -3e38).
        fold_every (int): batches between folds of the marks.
        reduction (str): `'minmax'` (exact) or `'sum'` (cheaper; see above).

    Example:
        >>> import torch
        >>> from specnorm.functional import FiniteCheck
        >>> fc = FiniteCheck("MyTransform")
        >>> fc.update(torch.ones(2, 3)); fc.update(torch.tensor([1.0, float("nan")]))
        >>> try:
        ...     fc.check()
        ... except ValueError as e:
        ...     print(e)
        MyTransform: 1 of the 2 batches ... held NaN or Inf outputs; the first is batch 1 (...) of shape (2,)
    """

    def __init__(self, who: str, what: str = "NaN or Inf outputs", fold_every: int = 256, reduction: str = "minmax"):
        if reduction not in ("minmax", "sum"):
            raise ValueError(f"reduction must be 'minmax' or 'sum', got {reduction!r}")
        if reduction == "sum":
            what += " (or finite outputs so large that their sum overflows float32)"
        self.who, self.what, self.fold_every, self.reduction = who, what, fold_every, reduction
        self.reset()

    def __getstate__(self):  # pickled (Learner.export) without marks: they may live on a device the loader lacks
        return {**self.__dict__, "nbatches": 0, "_shapes": [], "_buf": None, "_n": 0, "_summary": None}

    def reset(self) -> None:
        "Forget every batch seen."
        self.nbatches = 0
        self._shapes: list[tuple[int, tuple[int, ...]]] = []  # (first batch, shape) at each change of shape
        # Marks go into one preallocated float64 buffer `[fold_every, 3]` on the batches' device: small tensors
        # kept alive between batches would split the CPU heap around the large batch buffers, whose memory
        # then comes back from the system with page faults on every batch (measured 5-7x a clone).
        self._buf: Tensor | None = None
        self._n = 0  # marks in the buffer
        self._summary: Tensor | None = None  # float64 [first bad batch or inf, bad batches], on the marks' device

    def _row(self, y: Tensor) -> Tensor:
        "The mark row `[3]` of the batch `y` (registered here: its number and shape), zeros until written."
        if self._buf is not None and (self._buf.device != y.device or self._n == len(self._buf)):
            self._fold()
        if self._buf is None or self._buf.device != y.device:
            self._buf = torch.zeros(self.fold_every, 3, dtype=torch.float64, device=y.device)
        row = self._buf[self._n]
        self._n += 1
        if not self._shapes or self._shapes[-1][1] != tuple(y.shape):
            self._shapes.append((self.nbatches, tuple(y.shape)))
        self.nbatches += 1
        return row

    def update(self, y: Tensor, invalid: Tensor | None = None) -> None:
        "Mark the batch `y` (and as bad when the 0-d bool tensor `invalid` is true). Queues kernels only."
        y = y.as_subclass(Tensor).detach()
        row = self._row(y)[:2]
        if not y.numel():
            row.zero_()
        elif self.reduction == "sum":
            row.copy_(y.sum().expand(2))
        else:
            low, high = torch.aminmax(y)
            row[0], row[1] = low, high
        if invalid is not None:
            row.masked_fill_(invalid, math.nan)

    def count_cell(self, y: Tensor) -> Tensor:
        """Register the batch `y` and return its float64 count cell (a 1-element view on `y`'s device, 0).

        For a kernel that writes `y` and checks it in the same pass (`specnorm.kernel_affine`): it adds the
        number of NaN/Inf values it wrote into the cell, and the batch is bad when the cell is > 0. No kernel
        is queued here (the marks are zeroed when made and after each fold), so marking costs nothing extra.
        `y` may be allocated but not yet written: only its shape and device are used.
        """
        return self._row(y.as_subclass(Tensor))[2:]

    def shape_of(self, batch: int) -> tuple[int, ...]:
        "The shape of batch number `batch` since the last check."
        return next(shape for start, shape in reversed(self._shapes) if start <= batch)

    def _fold(self) -> None:
        if not self._n:
            return
        marks = self._buf[: self._n]  # [batches, 3]: two reduced values, and a kernel's NaN/Inf count
        start = self.nbatches - self._n
        index = torch.arange(start, self.nbatches, device=marks.device, dtype=torch.float64)
        bad = ~torch.isfinite(marks[:, :2]).all(1) | (marks[:, 2] != 0)
        part = torch.stack([torch.where(bad, index, math.inf).amin(), bad.sum(dtype=torch.float64)])
        if self._summary is not None:
            prev = self._summary.to(marks.device)  # only when batches change device
            part = torch.stack([torch.minimum(prev[0], part[0]), prev[1] + part[1]])
        marks.zero_()  # count cells start at 0 (one fill per fold, not one per batch)
        self._summary, self._n = part, 0

    def check(self) -> None:
        "Raise a ValueError if a batch since the last check was bad (reads the marks: one host sync); then start over."
        self._fold()
        if self._summary is None:
            return
        first, nbad = (float(v) for v in self._summary.tolist())
        nbatches, shape = self.nbatches, self.shape_of(int(first)) if nbad else None
        self.reset()
        if nbad:
            raise ValueError(
                f"{self.who}: {int(nbad)} of the {nbatches} batches since the last check held {self.what}; the "
                f"first is batch {int(first)} (counting from 0) of shape {shape}"
            )


def count_nonfinite(y: Tensor, count: Tensor, invalid: Tensor | None = None) -> None:
    """Add 1 into the float64 cell `count` when `y` holds NaN or Inf (or the 0-d bool `invalid` is true).

    The eager twin of the Triton kernels' count (which add how many values were bad): one `aminmax` of `y`,
    whose two values are finite exactly when every value is, and a few one-value kernels. No host read. Used by
    `instance_norm`, `sliding_norm` and `pcen` when they are given a `count` cell (`FiniteCheck.count_cell`)
    and run eager.

    Example:
        >>> import torch
        >>> from specnorm.functional import count_nonfinite
        >>> cell = torch.zeros(1, dtype=torch.float64)
        >>> count_nonfinite(torch.tensor([1.0, 2.0]), cell); count_nonfinite(torch.tensor([float("inf")]), cell)
        >>> cell
        tensor([1.], dtype=torch.float64)
    """
    if y.numel():
        low, high = torch.aminmax(y.detach())
        bad = (low.isfinite() & high.isfinite()).logical_not_()
        invalid = bad if invalid is None else bad | invalid
    if invalid is not None:
        count.add_(invalid)


# -- standardization with given statistics ----------------------------------------------------------------
def floor_std(mean: Tensor, std: Tensor, eps: float = SPEC_STD_EPS) -> Tensor:
    """The std a normalization divides by: `max(std, eps * |mean|)`, and 1 where that is still 0.

    The one floor rule of specnorm (`SpecNormalize`, the drift monitor's variances). A constant channel
    (std 0) gets the floor `eps * |mean|`, so it maps to ~0 instead of amplified rounding noise or Inf;
    an all-zero channel has nothing to scale and is only centred.

    Example:
        >>> import torch
        >>> from specnorm.functional import floor_std
        >>> floor_std(torch.tensor([-50.0, -50.0, 0.0]), torch.tensor([10.0, 0.0, 0.0]))
        tensor([10.0000,  0.0500,  1.0000])
    """
    eps = check_eps(eps)
    floor = eps * mean.abs()
    std = torch.where(std > floor, std, floor)
    return torch.where(std > 0, std, torch.ones_like(std))


def affine_params(mean: Tensor, std: Tensor, eps: float = SPEC_STD_EPS) -> tuple[Tensor, Tensor]:
    """`(scale, shift)` with `normalize(x) = x * scale + shift`: `1 / std` and `-mean / std`, std floored.

    Computed in float64 and returned as float32 of the broadcast shape; `1 / std` stays finite.

    Example:
        >>> import torch
        >>> from specnorm.functional import affine_params
        >>> affine_params(torch.tensor(-50.0), torch.tensor(10.0))
        (tensor(0.1000), tensor(5.))
    """
    mean, std = torch.broadcast_tensors(mean.double(), std.double())
    std = floor_std(mean, std, eps).clamp_min(1 / torch.finfo(torch.float32).max)
    return (1 / std).float(), (-mean / std).float()


@functools.lru_cache(maxsize=16)
def _unit_moments(channels: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    "Means 0 and variances 1 for `affine`'s batch norm, made once per shape: not two fills on every batch."
    return torch.zeros(channels, dtype=dtype, device=device), torch.ones(channels, dtype=dtype, device=device)


def affine_layout(x: Tensor, shape: Sequence[int]) -> tuple[int, int, int] | None:
    """`x` viewed as `[before, channels, run]` for statistics of `shape`, or None when no such view exists.

    `channels` spans the dims from the first to the last in which the statistics vary (for one value,
    none: `channels` is 1 and `run` spans every dim after the leading one), and `run` counts the contiguous
    values that share one scale and shift. None: `x` is 0-d or not contiguous, or the statistics vary
    over dims that are not adjacent or do not match `x`'s sizes. Shapes only: no host read.

    Example:
        >>> import torch
        >>> from specnorm.functional import affine_layout
        >>> x = torch.zeros(4, 1, 201, 401)
        >>> affine_layout(x, (1, 1, 201, 1)), affine_layout(x, (1,)), affine_layout(x, (1, 1, 201, 401))
        ((4, 201, 401), (4, 1, 80601), (4, 80601, 1))
    """
    shape = (1,) * (x.ndim - len(shape)) + tuple(shape)
    varying = [d for d, n in enumerate(shape) if n != 1]
    # (for one value, channels start after the leading dim, so that a fused kernel still splits the batch)
    first, last = (varying[0], varying[-1] + 1) if varying else (min(1, x.ndim), min(1, x.ndim))
    if x.ndim == 0 or not x.is_contiguous() or any(shape[d] != x.shape[d] for d in range(first, last)):
        return None
    return math.prod(x.shape[:first]), math.prod(x.shape[first:last]), math.prod(x.shape[last:])


def affine(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """`x * scale + shift` in one pass over `x`, for statistic-shaped `scale` and `shift`.

    A broadcasting multiply and add are two passes over the batch (read, write, read, write; 1.7-2.0x a
    clone of a `[64, 1, 201, 401]` batch with per-row statistics on the CPU), and a three-operand
    `torch.addcmul` falls off torch's vectorized path (2-3x). Inference-mode batch norm is exactly this
    affine per channel, with mean 0, variance 1 and eps 0 (so `1 / sqrt(1 + 0) = 1`), in one fused
    pass on the CPU; on CUDA the same view takes one Triton kernel (`specnorm.kernel_affine`; batch norm
    where triton is off): the batch is viewed as `[before, channels, after]` (`affine_layout`), where
    `channels` spans the dims in which the statistics vary. Results agree with the multiply-add to one
    rounding (the fused kernel may use a fused multiply-add). Statistics that vary over dims that are not
    adjacent, a batch that is not contiguous, or runs of fewer than `AFFINE_MIN_RUN` values per scale (the
    kernel's per-channel cost would dominate) take the two-pass multiply-add.

    Args:
        x: a floating tensor.
        scale, shift: tensors of one shape, broadcastable to `x` (e.g. `[1, 1, F, 1]` for per-row statistics),
            of `x`'s dtype and device.

    Shape:
        `x` -> same shape.

    Example:
        >>> import torch
        >>> from specnorm.functional import affine
        >>> scale, shift = torch.tensor([2.0, 3.0]).view(1, 1, 2, 1), torch.tensor([0.5, -1.0]).view(1, 1, 2, 1)
        >>> affine(torch.ones(1, 1, 2, 3), scale, shift)
        tensor([[[[2.5000, 2.5000, 2.5000],
                  [2.0000, 2.0000, 2.0000]]]])
    """
    layout = affine_layout(x, scale.shape)
    if layout is None or layout[2] < AFFINE_MIN_RUN or shift.shape != scale.shape:  # the last: plain broadcasting
        return torch.mul(x, scale).add_(shift)
    if x.is_cuda and _kernel_affine().enabled(x):
        return _kernel_affine().affine(x, scale, shift)
    channels = layout[1]
    view = x.view(layout)
    zero, one = _unit_moments(channels, x.dtype, x.device)
    y = torch.batch_norm(view, scale.reshape(-1), shift.reshape(-1), zero, one, False, 0.0, 0.0, False)
    return y.view(x.shape)


def normalize(x: Tensor, mean: Tensor | float, std: Tensor | float, eps: float = SPEC_STD_EPS) -> Tensor:
    """Standardize `x` with given statistics: `(x - mean) / max(std, eps * |mean|)`, as one fused pass.

    Args:
        x: any floating tensor (integers are converted).
        mean, std: numbers or tensors broadcastable to `x` (e.g. `[1, 1, F, 1]` for per-row statistics).
        eps: relative floor on std (`floor_std`).

    Shape:
        `x` -> same shape, float.

    Example:
        >>> import torch
        >>> from specnorm.functional import normalize
        >>> normalize(torch.tensor([-56.0, -48.0, -40.0]), -48.0, 8.0)
        tensor([-1.,  0.,  1.])
    """
    x = _float(x)
    scale, shift = affine_params(torch.as_tensor(mean), torch.as_tensor(std), eps)
    return affine(x, _to(scale, x, x.dtype), _to(shift, x, x.dtype))


def denormalize(y: Tensor, mean: Tensor | float, std: Tensor | float, eps: float = SPEC_STD_EPS) -> Tensor:
    """The inverse of `normalize` with the same arguments: `y * std + mean` (std floored the same way).

    Example:
        >>> import torch
        >>> from specnorm.functional import denormalize
        >>> denormalize(torch.tensor([-1.0, 0.0, 1.0]), -48.0, 8.0)
        tensor([-56., -48., -40.])
    """
    y = _float(y)
    mean, std = torch.broadcast_tensors(torch.as_tensor(mean).double(), torch.as_tensor(std).double())
    std = floor_std(mean, std, eps).clamp_min(1 / torch.finfo(torch.float32).max)
    return affine(y, _to(std.float(), y, y.dtype), _to(mean.float(), y, y.dtype))


def standardize(
    x: Tensor, dims: Sequence[int] = (-2, -1), eps: float = AUDIO_SILENCE_EPS, mask: Tensor | None = None
) -> Tensor:
    """Standardize each waveform by its own statistics: `(x - mean) / std` over `dims` (population std).

    Silence (std <= `eps * max(1, |mean|)`, e.g. all zeros or a constant) becomes zeros. NaN or Inf
    samples give NaN outputs for that item (no host read; the transforms check outputs with `FiniteCheck`).

    Args:
        x: waveforms `[..., C, T]`.
        dims: dims of one item's statistics: `(-2, -1)` over all channels, `(-1,)` per channel.
        eps: silence threshold (`AUDIO_SILENCE_EPS`).
        mask: optional bool tensor broadcastable to `x`, True on real samples (e.g. `valid_mask(x)` of a
            padded batch): the statistics are those of the real samples, and masked samples come out as 0.

    Example:
        >>> import torch
        >>> from specnorm.functional import standardize
        >>> y = standardize(torch.randn(2, 1, 8000) * 0.1 + 0.3)
        >>> y.mean(-1).abs().max() < 1e-5, torch.allclose(y.std(-1, correction=0), torch.ones(2, 1))
        (tensor(True), True)
    """
    x = _float(x)
    eps = check_eps(eps)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"standardize: got an empty signal of shape {tuple(x.shape)}")
    dims = tuple(dims)
    if mask is None:
        std, mean = torch.std_mean(x, dim=dims, correction=0, keepdim=True)
    else:
        mask = torch.as_tensor(mask, device=x.device).as_subclass(Tensor).expand(x.shape)
        count = mask.sum(dims, keepdim=True, dtype=x.dtype).clamp_min(1)  # all padding: zeros, not NaN
        mean = torch.where(mask, x, 0).sum(dims, keepdim=True) / count
        std = (torch.where(mask, x - mean, 0).square().sum(dims, keepdim=True) / count).sqrt()
    silent = std <= eps * mean.abs().clamp_min(1)
    scale = torch.where(silent, 0.0, 1 / std.clamp_min(torch.finfo(std.dtype).tiny))
    out = torch.sub(x, mean).mul_(scale)
    return out if mask is None else out.masked_fill_(~mask, 0)


# -- exact statistics -------------------------------------------------------------------------------------
class Moments(NamedTuple):
    "Float64 `(count, mean, m2)`: elements, mean and sum of squared deviations per statistic."

    count: Tensor
    mean: Tensor
    m2: Tensor


def _sum64(t: Tensor, dims: tuple[int, ...]) -> Tensor:
    "Sum over `dims` in float64: the last dim first in `t`'s dtype (short, contiguous, fast), the rest in float64."
    if t.ndim - 1 in dims and t.shape[-1] > 1:
        t, dims = t.sum(-1, keepdim=True), tuple(d for d in dims if d != t.ndim - 1)
    return t.double().sum(dims, keepdim=True) if dims else t.double()


def _pow2_scale(amax: Tensor, dtype: torch.dtype) -> Tensor:
    "A power of two `s` with `amax * s < 1` (exact to multiply by); 1 where `amax` is 0, NaN or Inf."
    amax = amax.nan_to_num(1.0, 1.0, 1.0)  # frexp(0) has exponent 0: s = 1
    limit = round(math.log2(torch.finfo(dtype).max)) - 1  # s and 1 / s stay normal numbers of `dtype`
    return torch.ldexp(torch.ones_like(amax), -torch.frexp(amax).exponent.clamp(-limit, limit))


def moments(
    x: Tensor, dims: Sequence[int], mask: Tensor | None = None, omit_nonfinite: bool = False
) -> tuple[Moments, Tensor]:
    """Exact float64 `(count, mean, m2)` of `x` over `dims` (kept with size 1), and its NaN/Inf count.

    The corrected two-pass algorithm (Chan, Golub & LeVeque, The American Statistician 37(3), 1983):
    values are scaled by a power of two (exact) so that no square overflows or underflows, centred on
    their mean, summed, and the sums corrected in float64. So float32 data of any finite magnitude
    (denormals, 1e19, 3e38) give the float64 two-pass result; 32/64-bit integers are read as float64.

    Args:
        x: a tensor of any rank.
        dims: the dims to reduce.
        mask: optional bool tensor broadcastable to `x`: only True elements count.
        omit_nonfinite: leave NaN/Inf values out of the statistics (else they make them NaN).

    Returns:
        `(Moments(count, mean, m2), nonfinite)`: float64 tensors of `x`'s rank with size 1 on `dims`,
        and an int64 0-d tensor counting the NaN/Inf values (among the masked ones).

    Example:
        >>> import torch
        >>> from specnorm.functional import moments
        >>> (count, mean, m2), bad = moments(torch.tensor([[-3e19, 3e19, -3e19, 3e19]]), dims=(1,))
        >>> count.item(), mean.item(), round((m2 / count).sqrt().item() / 3e19, 6), bad.item()
        (4.0, 0.0, 1.0, 0)
    """
    x = _float(x)
    dims = tuple(sorted(d % x.ndim for d in dims))
    valid = None if mask is None else mask.expand(x.shape)
    if omit_nonfinite:
        finite = torch.isfinite(x)
        valid = finite if valid is None else valid & finite
        nonfinite = torch.count_nonzero(~finite if mask is None else mask & ~finite)
    xv = x if valid is None else torch.where(valid, x, 0)
    # Scale by a power of two so that |x * s| < 1: squares neither overflow nor underflow, and nothing is rounded.
    # (amax and amin are vectorised reductions on the CPU, 10x faster there than an inf-norm)
    amax = torch.maximum(xv.amax(dims, keepdim=True), xv.amin(dims, keepdim=True).neg_())
    s = _pow2_scale(amax, x.dtype)
    if valid is None:
        count = torch.full(amax.shape, x.numel() // max(amax.numel(), 1), dtype=torch.float64, device=x.device)
        shift = x.mean(dims, keepdim=True)
    else:
        count = valid.sum(dims, keepdim=True, dtype=torch.float64)
        shift = xv.sum(dims, keepdim=True) / count.clamp(min=1).to(x.dtype)
    # A NaN in the batch makes its mean NaN, and a huge batch's float32 sum may overflow: centre on 0 then.
    shift = shift.nan_to_num(0.0, 0.0, 0.0).mul_(s)
    # x * s is exact (a power of two) and below 1, so x * s - shift rounds once and cannot overflow, even
    # for +-3e38 data whose x - mean would (a fused addcmul broadcasts slowly on the CPU).
    d = torch.mul(x, s).sub_(shift)
    if valid is not None:
        d = torch.where(valid, d, 0)
    s1 = _sum64(d, dims)
    s2 = _sum64(d.square_(), dims)  # in place: no second batch-sized buffer
    if not omit_nonfinite:  # in place, as d is spent: NaN - NaN and Inf - Inf are NaN, finite - itself is 0
        nonfinite = torch.count_nonzero(d.sub_(d))
    n = count.clamp(min=1)
    s64 = s.double()
    mean = (shift.double() + s1 / n) / s64
    m2 = (s2 - s1 * s1 / n).clamp(min=0) / s64.square()
    return Moments(count, mean, m2), nonfinite


def combine_moments(a: Sequence[Tensor], b: Sequence[Tensor]) -> Moments:
    """Combine two float64 `(count, mean, m2)` triples elementwise: Chan, Golub & LeVeque's pairwise update.

    `n = na + nb`, `mean = ma + (mb - ma) nb / n`, `m2 = m2a + m2b + (mb - ma)^2 na nb / n`; exact
    whatever the split, order or merge tree. Statistics with no elements yet keep weight 0.

    Example:
        >>> import torch
        >>> from specnorm.functional import combine_moments, moments
        >>> x = torch.randn(1000, dtype=torch.float64)
        >>> (a, _), (b, _) = moments(x[:300], (0,)), moments(x[300:], (0,))
        >>> n, mean, m2 = combine_moments(a, b)
        >>> torch.allclose(mean, x.mean()), torch.allclose(m2 / n, x.var(correction=0))
        (True, True)
    """
    (na, ma, m2a), (nb, mb, m2b) = a, b
    n = na + nb
    w = nb / n.clamp(min=1)
    delta = mb - ma
    return Moments(n, ma + delta * w, m2a + m2b + delta * delta * na * w)


def gaussian_kl(mean_p: Tensor, var_p: Tensor, mean_q: Tensor, var_q: Tensor, eps: float = SPEC_STD_EPS) -> Tensor:
    """KL(p || q) in nats between Gaussians, elementwise: `(r - 1 - log r + d^2) / 2`.

    With `r = var_p / var_q` and `d = (mean_p - mean_q) / std_q`. Both stds are floored with `floor_std`
    (relative to |mean_q|, as `SpecNormalize` floors them), so a constant reference channel compared
    with data that jitters by rounding scores ~0, not 1e30. Computed in float64.

    Example:
        >>> import torch
        >>> from specnorm.functional import gaussian_kl
        >>> gaussian_kl(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(0.0), torch.tensor(1.0))
        tensor(0.5000, dtype=torch.float64)
    """
    mean_p, var_p, mean_q, var_q = (torch.as_tensor(t).double() for t in (mean_p, var_p, mean_q, var_q))
    std_q = floor_std(mean_q, var_q.clamp(min=0).sqrt(), eps)
    std_p = floor_std(mean_q, var_p.clamp(min=0).sqrt(), eps)
    ratio = (std_p / std_q).square()
    shift = (mean_p - mean_q) / std_q
    return (ratio - 1 - ratio.log() + shift.square()) / 2


# -- per-clip statistics ---------------------------------------------------------------------------------
def lengths_to_mask(
    lengths: Sequence[int] | Tensor, n_frames: int, pad_before: Sequence[int] | Tensor | None = None
) -> Tensor:
    """A `[B, 1, 1, n_frames]` bool mask, True on the `lengths[i]` frames of item `i` after its `pad_before[i]`.

    Args:
        lengths: valid frames (or samples) per item.
        n_frames: the padded length.
        pad_before: padding before each item's valid part (None: 0, the valid part comes first).

    Example:
        >>> from specnorm.functional import lengths_to_mask
        >>> lengths_to_mask([2, 3], 4)[:, 0, 0]
        tensor([[ True,  True, False, False],
                [ True,  True,  True, False]])
        >>> lengths_to_mask([2, 3], 4, pad_before=[1, 0])[:, 0, 0]
        tensor([[False,  True,  True, False],
                [ True,  True,  True, False]])
    """
    lengths = torch.as_tensor(lengths).as_subclass(Tensor).reshape(-1, 1, 1, 1)
    t = torch.arange(n_frames, device=lengths.device)
    if pad_before is None:
        return t < lengths
    first = torch.as_tensor(pad_before, device=lengths.device).as_subclass(Tensor).reshape(-1, 1, 1, 1)
    return (t >= first) & (t < first + lengths)


def padding_of(x: Tensor) -> tuple[Tensor | int | None, Tensor | int]:
    """`x`'s valid lengths and the padding before them along its last axis: `(lengths, pad_before)`, or
    `(None, 0)` when `x` carries no `lengths` that describe it.

    fastai's tensor types copy their metadata into every tensor made from them (a slice, `new_zeros`...),
    so a tensor may carry the `lengths` of another batch: a 1-d `lengths` counts only when it has one
    entry per item of `x` (its first dim); a number (an item's length) always does. Shapes are metadata:
    no host read.

    Example:
        >>> import torch
        >>> from specnorm.functional import padding_of
        >>> x = torch.zeros(2, 1, 5)
        >>> x.lengths = torch.tensor([2, 5])
        >>> padding_of(x)[0], padding_of(x[:1])
        (tensor([2, 5]), (None, 0))
    """
    lengths = getattr(x, "lengths", None)
    if isinstance(lengths, Tensor) and lengths.ndim == 1 and (x.ndim < 2 or lengths.shape[0] != x.shape[0]):
        return None, 0
    if lengths is None:
        return None, 0
    return lengths, getattr(x, "pad_before", 0)


def has_padding(x: Tensor) -> bool:
    """Whether `x` may hold padded positions: it carries `lengths` that describe it (`padding_of`), other
    than lengths marked as covering every clip (`x.unpadded is x.lengths`).

    The loaders know each batch's lengths on the host when they make it; when no clip is padded they set
    `unpadded` to the batch's `lengths` object, so the transforms skip their masking passes. Lengths
    assigned later are another object, and are masked as usual. Metadata only: no host read.

    Example:
        >>> import torch
        >>> from specnorm.functional import has_padding
        >>> x = torch.zeros(2, 1, 5)
        >>> x.lengths = torch.tensor([5, 5])
        >>> has_padding(x), setattr(x, "unpadded", x.lengths), has_padding(x)
        (True, None, False)
    """
    lengths, _ = padding_of(x)
    return lengths is not None and lengths is not getattr(x, "unpadded", None)


def valid_mask(x: Tensor) -> Tensor | None:
    """The bool mask of `x`'s valid (unpadded) positions along its last axis, from its `lengths` and
    `pad_before` attributes (None without `lengths`, or when they are marked unpadded: `has_padding`),
    shaped to broadcast to `x`: `[B, 1, ..., T]` for a batch (`lengths` a 1-d tensor), `[1, ..., T]` for
    an item (`lengths` a number). Made on `x`'s device with no host read.

    Example:
        >>> import torch
        >>> from specnorm.functional import valid_mask
        >>> x = torch.zeros(2, 1, 5)
        >>> x.lengths, x.pad_before = torch.tensor([2, 5]), torch.tensor([1, 0])
        >>> valid_mask(x)[:, 0].int()
        tensor([[0, 1, 1, 0, 0],
                [1, 1, 1, 1, 1]], dtype=torch.int32)
    """
    if not has_padding(x):
        return None
    lengths, pad_before = padding_of(x)
    n = x.shape[-1]
    batched = isinstance(lengths, Tensor) and lengths.ndim == 1  # shape metadata: no host read
    mask = lengths_to_mask(lengths, n, pad_before)
    if mask.device != x.device:
        mask = mask.to(x.device, non_blocking=True)
    lead = (-1,) if batched else (1,)
    return mask.reshape(lead + (1,) * (x.ndim - 2) + (n,))


def _inv_std(var: Tensor, eps: float) -> Tensor:
    """`1 / max(sqrt(var), eps)`, and NaN where `var` is Inf: float32 squares of values beyond ~1.8e19 overflow,
    and a scale of 0 would turn the clip into silent zeros; NaN outputs are reported by the transforms' checks."""
    return var.sqrt().clamp_(min=eps).reciprocal_().masked_fill_(var.isinf(), math.nan)


def instance_norm(
    x: Tensor,
    axes: Sequence[int] = (2, 3),
    mask: Tensor | None = None,
    eps: float = INSTANCE_EPS,
    count: Tensor | None = None,
) -> Tensor:
    """Standardise each spectrogram of `x` over `axes`: `(x - mean) / max(std, eps)` (population std).

    Per-utterance CMVN. Statistics are float64 sums for a mask; otherwise, on the CPU, a float64 mean and
    a centred second pass; on CUDA, when `axes` are the trailing dims, two Triton kernels (float64 partial
    sums, then one fused pass: `specnorm.kernel_affine`); elsewhere torch's `var_mean`. At least in
    float32 (float16 data with std 400 has a variance float16 cannot hold). A group whose float32 squares
    overflow (values ~1.8e19 or more from its mean) gives NaN outputs, which the transform's check reports,
    rather than the zeros an infinite std would make.

    Args:
        x: `[B, C, F, T]` batch, or a `[C, F, T]` item (treated as a batch of one).
        axes: the axes of the batch layout `[B, C, F, T]` the statistics run over: `(2, 3)` per
            channel of each clip (the default), `(1, 2, 3)` per clip, `(3,)` per frequency channel
            over time (per-utterance CMVN). The batch axis 0 is not allowed (that is `SpecNormalize`).
        mask: optional bool tensor broadcastable to the batch, True where values are real (e.g.
            `lengths_to_mask(lengths, T)` for a batch padded in time); masked positions give zeros.
        eps: floor on the standard deviation, in the input's units (> 0).
        count: None, or a float64 one-element tensor on `x`'s device (`FiniteCheck.count_cell`): a positive
            number is added into it when the output holds NaN or Inf, by the CUDA kernel as it writes them
            (no extra pass), elsewhere by `count_nonfinite`. No host read either way.

    Shape:
        `[B, C, F, T]` or `[C, F, T]` -> same shape and dtype (float).

    Example:
        >>> import torch
        >>> from specnorm.functional import instance_norm
        >>> y = instance_norm(torch.randn(2, 1, 8, 50) * 20 - 50)
        >>> y.mean((2, 3)).abs().max() < 1e-5, torch.allclose(y.std((2, 3), correction=0), torch.ones(2, 1))
        (tensor(True), True)
    """
    x = x.as_subclass(Tensor)
    out_dtype = x.dtype if x.is_floating_point() else _float(x).dtype
    x = _float(x)
    item = x.ndim == 3
    if item:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"instance_norm expects [B, C, F, T] or [C, F, T], got shape {tuple(x.shape)}")
    dims = check_axes(axes, 4, allowed=(1, 2, 3))
    eps = check_eps(eps, positive=True)
    if mask is None:
        if x.device.type == "cpu":
            # Two passes: torch's CPU var_mean (Welford) runs at ~35x a clone of the batch, a sum at ~0.3x.
            # The mean is a float64 sum (a constant's mean is exactly that constant: silence stays exact
            # zeros); squares are summed along the last reduced dim in float32 (vectorized) and across those
            # partial sums in float64, so long clips stay within ~1e-6 of float64.
            n = math.prod(x.shape[d] for d in dims)
            out = x - (x.sum(dims, keepdim=True, dtype=torch.float64) / n).to(x.dtype)
            *rest, inner = dims
            ss = torch.linalg.vector_norm(out, 2, inner, keepdim=True).double().square_()
            var = (ss.sum(rest, keepdim=True) if rest else ss) / n
            out.mul_(_inv_std(var, eps).to(out.dtype))
        elif x.is_cuda and _kernel_affine().enabled(x) and _kernel_affine().instance_layout(x, dims):
            # two Triton kernels: float64 partial sums, then one fused (x - mean) * (1 / max(std, eps))
            out = _kernel_affine().instance_norm(x, dims, eps, count)
            count = None  # counted
        else:  # one reduction kernel on a GPU; then subtract first, so a constant gives exact zeros
            var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
            out = torch.sub(x, mean).mul_(_inv_std(var, eps))
        if count is not None:
            count_nonfinite(out, count)
        return (out[0] if item else out).to(out_dtype)
    mask = torch.as_tensor(mask, device=x.device).as_subclass(Tensor).bool()
    if item and mask.ndim == 3:
        mask = mask[None]
    try:
        mask = mask.expand_as(x)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the batch {tuple(x.shape)}"
        ) from None
    n_valid = mask.sum(dims, keepdim=True).clamp(min=1)  # a fully masked clip gives zeros, not NaN
    # A float64 sum makes the mean of a constant exactly that constant: silence stays exact zeros.
    total = torch.where(mask, x, 0).sum(dims, keepdim=True, dtype=_accumulator_dtype(x))
    mean = (total / n_valid).to(x.dtype)
    var = torch.where(mask, (x - mean) ** 2, 0).sum(dims, keepdim=True) / n_valid
    out = torch.sub(x, mean).mul_(_inv_std(var, eps))  # in place: one batch-sized buffer, not two
    out = torch.where(mask, out, 0)
    if count is not None:
        count_nonfinite(out, count)
    return (out[0] if item else out).to(out_dtype)


# -- sliding windows -------------------------------------------------------------------------------------
def window_edges(
    t: np.ndarray | Tensor, n: int | np.ndarray | Tensor, window: int, center: bool, min_window: int
) -> tuple[np.ndarray | Tensor, np.ndarray | Tensor]:
    """The window rules of the `sliding` module docstring, elementwise: frame `t` of a clip of `n` frames is
    normalized over frames `[start, end)`. `t` (and `n`) are int64 numpy arrays (the host layout of
    `sliding_norm`) or torch tensors (per-clip windows of `sliding.padded_sliding_norm`, on the device)."""
    if isinstance(t, np.ndarray):
        low, high = np.maximum, np.minimum
    else:
        low, high = (lambda a, m: a.clamp(min=m)), (lambda a, m: a.clamp(max=m))
    if center:
        start = t - window // 2
        end = start + window - high(start, 0)  # shifted right to start at frame 0
    else:
        start, end = t - window, low(t + 1, min_window)  # at the start: look ahead to min_window frames
    start = low(start, 0)
    overflow = low(end - n, 0)
    return low(start - overflow, 0), end - overflow  # shifted left to end at the clip's last frame


def _bounds(n_frames: int, window: int, center: bool, min_window: int) -> tuple[np.ndarray, np.ndarray]:
    "`window_edges` of every frame of a clip of `n_frames`, as int64 numpy arrays (host metadata, not data)."
    if window < 1 or min_window < 1:
        raise ValueError(f"window and min_window must be at least 1 frame, not {window} and {min_window}")
    return window_edges(np.arange(n_frames, dtype=np.int64), n_frames, window, center, min_window)


def window_bounds(
    n_frames: int, window: int, center: bool = True, min_window: int = MIN_WINDOW, device: torch.device | None = None
) -> tuple[Tensor, Tensor]:
    """`(start, end)` int64 tensors of length `n_frames`: frame `t` is normalized over `[start[t], end[t])`.

    The rules are Kaldi's `apply-cmvn-sliding` ones, stated in the `specnorm.sliding` module docstring.

    Example:
        >>> from specnorm.functional import window_bounds
        >>> window_bounds(5, 3)
        (tensor([0, 0, 1, 2, 2]), tensor([3, 3, 4, 5, 5]))
    """
    start, end = _bounds(n_frames, window, center, min_window)
    return tuple(torch.from_numpy(b).to(device or "cpu", non_blocking=True) for b in (start, end))


class _Windows(NamedTuple):
    """The distinct windows of `window_bounds`, in frame order, as `_window_sums` and `_per_frame` use them.

    Frames `[0, lead]` use window 0, frame `lead + k` window `k`, the frames after that the last window
    (only the shifted windows at the clip's edges are shared). From window `k - 1` to `k` each edge
    advances by 0 or 1 frame: the frames `enter` come in one per window from window `grow_at` on,
    the frames `leave` go out one per window from window `shrink_at` on. `of` checks this shape.
    """

    count: Tensor  # frames in each window, CPU int64 [K]
    min_count: int
    lead: int
    first: slice  # window 0
    enter: slice
    leave: slice
    grow_at: int
    shrink_at: int

    @classmethod
    def of(cls, start: np.ndarray, end: np.ndarray) -> _Windows:
        "The windows of frames `[start[t], end[t])` (int64 numpy arrays from `_bounds`)."
        n = len(start)
        moves = np.ones(n, dtype=bool)
        moves[1:] = (np.diff(start) != 0) | (np.diff(end) != 0)
        first_frame = np.flatnonzero(moves)
        starts, ends = start[first_frame], end[first_frame]
        k = len(first_frame)
        lead = n - 1 if k == 1 else int(first_frame[1]) - 1
        grows, shrinks = np.flatnonzero(np.diff(ends)) + 1, np.flatnonzero(np.diff(starts)) + 1
        s0, e0, s1, e1 = (int(i) for i in (starts[0], ends[0], starts[-1], ends[-1]))
        runs = all(len(i) == 0 or int(i[-1] - i[0]) + 1 == len(i) for i in (grows, shrinks))
        if (
            lead + k > n
            or int(moves[lead + 1 : lead + k].sum()) != k - 1
            or not runs
            or e1 - e0 != len(grows)
            or s1 - s0 != len(shrinks)
        ):
            raise RuntimeError(f"windows {start.tolist()}, {end.tolist()} do not slide one frame at a time")
        at = lambda steps: int(steps[0]) if len(steps) else k
        count = ends - starts
        return cls(
            torch.from_numpy(count), int(count.min()), lead, slice(s0, e0), slice(e0, e1), slice(s0, s1),
            at(grows), at(shrinks),
        )  # fmt: skip


@functools.lru_cache(maxsize=16)
def _frame_windows(n_frames: int, window: int, center: bool, min_window: int = MIN_WINDOW) -> _Windows:
    "`_Windows` of `window_bounds(n_frames, window, center, min_window)`, kept for the next clip of that length."
    return _Windows.of(*_bounds(n_frames, window, center, min_window))


@functools.lru_cache(maxsize=16)
def _hop_windows(n: int, window: int, hop: int) -> tuple[Tensor, Tensor, int]:
    "The centred windows at samples `0, hop, 2 hop, ...` and `n - 1`: CPU int64 `(start, end)`, and their edges' gcd."
    nodes = np.arange(0, n, hop)
    if (n - 1) % hop:
        nodes = np.append(nodes, n - 1)
    start, end = (b[nodes] for b in _bounds(n, window, True, MIN_WINDOW))
    return torch.from_numpy(start), torch.from_numpy(end), math.gcd(*np.concatenate([start, end]).tolist())


def _window_sums(v: Tensor, windows: _Windows, sums: Tensor) -> Tensor:
    """Sums of `v` along its last axis over `windows` into `sums`.

    `sums` has `v`'s dtype, `[1, ..., K]`; `[2, ..., K]` adds squares.

    The first window is summed directly; every next window adds the frame that enters and removes the
    one that leaves, and one cumulative sum over the windows accumulates these steps. The frames that
    enter (leave) are consecutive, so both are slices of `v`, and the running sums never hold more
    than a window's worth of frames (no prefix sum over the whole clip).
    """
    squares = len(sums) == 2
    first = v[..., windows.first]
    torch.sum(first, -1, out=sums[0, ..., 0])
    if squares:
        torch.linalg.vecdot(first, first, out=sums[1, ..., 0])
    k = sums.shape[-1]
    if k == 1:
        return sums
    enter, leave = v[..., windows.enter], v[..., windows.leave]
    if enter.shape[-1] == leave.shape[-1] == k - 1:  # the window slides: one frame in and one out at every step
        torch.sub(enter, leave, out=sums[0, ..., 1:])
        if squares:  # enter^2 - leave^2 = (enter - leave)(enter + leave): no cancellation of large squares
            torch.add(enter, leave, out=sums[1, ..., 1:]).mul_(sums[0, ..., 1:])
    else:  # a window at the clip's edge grows or shrinks
        sums[..., 1:].zero_()
        grow = slice(windows.grow_at, windows.grow_at + enter.shape[-1])
        shrink = slice(windows.shrink_at, windows.shrink_at + leave.shape[-1])
        for p, power in enumerate((enter, enter * enter)[: len(sums)]):
            sums[p, ..., grow] += power
        for p, power in enumerate((leave, leave * leave)[: len(sums)]):
            sums[p, ..., shrink] -= power
    return sums.cumsum_(-1)


def _per_frame(op, frames: Tensor, values: Tensor, lead: int) -> None:
    "`op(frames, values)` in place, value `k` on frame `lead + k`; the frames before or after all take the edge values."
    k = values.shape[-1]
    op(frames[..., :lead], values[..., :1])
    op(frames[..., lead : lead + k], values)
    op(frames[..., lead + k :], values[..., -1:])


_BLOCK = 2**22  # bytes of scratch per block of rows (4 MiB): stays in cache; buffers are allocated once per call


def _row_blocks(n_rows: int, n_cols: int, device: torch.device, dtype: torch.dtype) -> tuple[list[slice], int]:
    "Row ranges of about `_BLOCK` bytes in `dtype` on CPU (one block on an accelerator), and the largest block."
    block = max(1, _BLOCK // (n_cols * dtype.itemsize)) if device.type == "cpu" else max(1, n_rows)
    return [slice(i, i + block) for i in range(0, n_rows, block)], min(block, n_rows)


def sliding_norm(
    x: Tensor,
    window: int = SLIDING_WINDOW,
    center: bool = True,
    norm_vars: bool = False,
    min_window: int = MIN_WINDOW,
    eps: float = INSTANCE_EPS,
    count: Tensor | None = None,
) -> Tensor:
    """Sliding-window mean (and variance) normalization of `x` along its last axis (time).

    Every row (each frequency channel of each clip) is normalized on its own over the window of frames
    around each frame (Kaldi's `apply-cmvn-sliding` rules, accuracy: see the `specnorm.sliding` module
    docstring). With `norm_vars`, the window's std is floored at `eps` (> 0).

    Args:
        x: `[..., T]`, e.g. `[B, C, F, T]` spectrograms.
        window: window length in frames.
        center: centred windows (True) or windows ending at the frame (False, causal).
        norm_vars: also divide by the window's standard deviation.
        min_window: with `center=False`, the fewest frames used at the start of a clip.
        eps: floor on the standard deviation (input units).
        count: None, or a float64 one-element tensor on `x`'s device (`FiniteCheck.count_cell`): a positive
            number is added into it when the output holds NaN or Inf (see `instance_norm`).

    Shape:
        `[..., T]` -> same shape; floating inputs keep their dtype, integers give float32 (float64 for
        32/64-bit integers).

    Example:
        >>> import torch
        >>> from specnorm.functional import sliding_norm
        >>> x = torch.arange(6.0)[None] + 100
        >>> sliding_norm(x, window=3)
        tensor([[-1.,  0.,  0.,  0.,  0.,  1.]])
    """
    x = _float(x)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"sliding_norm needs frames on the last axis, got shape {tuple(x.shape)}")
    eps = check_eps(eps, positive=norm_vars)
    n_frames = x.shape[-1]
    windows = _frame_windows(n_frames, window, center, min_window)
    if x.is_cuda:  # one Triton pass (see specnorm.kernel_sliding); imported only here
        from . import kernel_sliding

        if kernel_sliding.use_kernel(x):
            return kernel_sliding.sliding_rows(x, window, center, norm_vars, min_window, eps, count)
    work = x.dtype
    # On CPU a float32 cumulative sum accumulates in float64 and rounds each window sum once: enough for
    # the mean. The variance E[z^2] - E[z]^2 cancels, so its sums are float64 wherever the device has it.
    acc = work if (x.device.type == "cpu" and not norm_vars) else _accumulator_dtype(x)
    frames = _to(windows.count, x, acc)  # frames per window
    rows = x.reshape(-1, n_frames)
    out = torch.empty(rows.shape, dtype=work, device=x.device)
    blocks, block = _row_blocks(len(rows), n_frames, x.device, acc)
    sums_buffer = torch.empty((1 + norm_vars, block, len(frames)), dtype=acc, device=x.device)
    if acc != work:
        acc_buffer = torch.empty((block, n_frames), dtype=acc, device=x.device)
        stats_buffer = torch.empty_like(sums_buffer, dtype=work)
    for b in blocks:
        # any per-row shift leaves the result unchanged; this one keeps the sums small
        z = torch.sub(rows[b], rows[b].mean(-1, keepdim=True, dtype=work), out=out[b])
        zs = z if acc == work else acc_buffer[: len(z)].copy_(z)
        sums = _window_sums(zs, windows, sums_buffer[:, : len(z)]).div_(frames)
        if norm_vars:  # 1 / max(std, eps) from E[z^2] - E[z]^2, before any rounding to float32: a variance of
            # values beyond ~1e19 overflows float32, its inverse square root does not
            sums[1].addcmul_(sums[0], sums[0], value=-1).clamp_(min=eps * eps).rsqrt_()
        stats = sums if acc == work else stats_buffer[:, : len(z)].copy_(sums)
        _per_frame(torch.Tensor.sub_, z, stats[0], windows.lead)
        if norm_vars:
            scale = stats[1]
            if windows.min_count == 1:
                scale.mul_(frames > 1)  # a one-frame window gives 0, as in Kaldi
            _per_frame(torch.Tensor.mul_, z, scale, windows.lead)
    if count is not None:
        count_nonfinite(out, count)
    return out.view(x.shape)


def _node_rms(x: Tensor, start: Tensor, end: Tensor, g: int) -> Tensor:
    """RMS of `x` over windows `[start[k], end[k])` a hop apart, from a float64 cumulative sum of squares.

    When all window edges are multiples of some `g >= 16` (a hop that divides half the window and the
    clip length), the squares are first summed over blocks of `g` samples (float32 sums of positive
    terms, exact to about 1e-7 relative), which makes the sequential cumulative sum `g` times shorter;
    otherwise the float64 squares of every sample are summed.
    """
    if g >= 16:  # below that, summing tiny blocks is slower than summing samples
        blocks = x.view(len(x), -1, g)
        prefix = torch.linalg.vecdot(blocks, blocks).to(_accumulator_dtype(x)).cumsum_(-1)
    else:
        g, prefix = 1, x.to(_accumulator_dtype(x), copy=True).square_().cumsum_(-1)
    at = lambda i: _to((i // g - 1).clamp(min=0), prefix)  # prefix[j] sums the first (j + 1) g samples
    sums = prefix.index_select(-1, at(end)) - prefix.index_select(-1, at(start)) * _to(start > 0, prefix, prefix.dtype)
    return sums.div_(_to(end - start, sums, sums.dtype)).clamp_(min=0).sqrt_().to(x.dtype)


def _interpolate(env: Tensor, values: Tensor, hop: int) -> None:
    "Fill `env` [R, n] by linear interpolation of `values` taken at samples `0, hop, 2 hop, ...` and `n - 1`."
    n = env.shape[-1]
    full = (n - 1) // hop  # whole hops; the last node is `n - 1`, `full * hop` or after it
    slopes = values.diff(dim=-1)
    if full:  # one broadcast multiply-add per hop (torch.lerp broadcasts four times slower)
        weight = torch.arange(hop, device=env.device, dtype=env.dtype) / hop
        hops = env[..., : full * hop].view(-1, full, hop)
        torch.mul(slopes[..., :full, None], weight, out=hops).add_(values[..., :full, None])
    rest = n - full * hop  # samples from node `full` to the end
    if rest > 1:
        weight = torch.arange(rest, device=env.device, dtype=env.dtype) / (rest - 1)
        torch.mul(slopes[..., full : full + 1], weight, out=env[..., full * hop :]).add_(values[..., full : full + 1])
    else:
        env[..., full * hop :] = values[..., full : full + 1]


def short_time_rms(x: Tensor, window: int, hop: int | None = None, floor: float | None = None) -> Tensor:
    """RMS of `x` along its last axis in a centred window of `window` samples around each sample.

    Windows follow the `center=True` rule of `sliding_norm` (shifted to stay inside the clip). With
    `hop`, the RMS is taken at samples `0, hop, 2 hop, ...` and at the last sample, and linearly
    interpolated between them. The sums of squares are float64 (see the `specnorm.sliding` module
    docstring for the accuracy). With `floor`, returns `x / max(rms, floor)` instead (the short-time
    gain control of `ShortTimeAudioNormalize`), computed block by block while the block is in cache.

    Args:
        x: `[..., T]` waveforms.
        window: window length in samples.
        hop: spacing of the RMS estimates in samples; None: at every sample.
        floor: if given (> 0), return the normalized signal.

    Shape:
        `[..., T]` -> same shape, float (half precision as float32 at least).

    Example:
        >>> import torch
        >>> from specnorm.functional import short_time_rms
        >>> short_time_rms(torch.tensor([[3.0, -3.0, 3.0, -3.0]]), window=2)
        tensor([[3., 3., 3., 3.]])
    """
    x = _float(x)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"short_time_rms: got an empty signal of shape {tuple(x.shape)}")
    if floor is not None:
        floor = check_eps(floor, "floor", positive=True)
    n = x.shape[-1]
    acc = _accumulator_dtype(x)
    rows = x.reshape(-1, n)
    env = torch.empty(rows.shape, dtype=rows.dtype, device=x.device)
    blocks, block = _row_blocks(len(rows), n, x.device, acc)
    if hop is None:
        windows = _frame_windows(n, window, center=True)
        count = _to(windows.count, x, acc)
        power_buffer = torch.empty((block, n), dtype=acc, device=x.device)
        sums_buffer = torch.empty((1, block, len(count)), dtype=acc, device=x.device)
    else:
        start, end, g = _hop_windows(n, window, hop)
    for b in blocks:
        if hop is None:
            power = power_buffer[: len(rows[b])].copy_(rows[b]).square_()  # float64: exact squares, and so their sums
            sums = _window_sums(power, windows, sums_buffer[:, : len(power)])[0]
            _per_frame(torch.Tensor.copy_, env[b], sums.div_(count).clamp_(min=0).sqrt_(), windows.lead)
        else:
            _interpolate(env[b], _node_rms(rows[b], start, end, g), hop)
        if floor is not None:
            torch.div(rows[b], env[b].clamp_(min=floor), out=env[b])
    return env.view(x.shape)


# -- PCEN ------------------------------------------------------------------------------------------------
_CHUNK = 32  # frames per chunk of the CPU recursion; 16-64 perform alike


def pcen_smoothing_coef(
    time_constant: float = PCEN_DEFAULTS["time_constant"],
    sr: float = PCEN_DEFAULTS["sr"],
    hop_length: int = PCEN_DEFAULTS["hop_length"],
) -> float:
    """librosa's smoothing coefficient `b` for a time constant in seconds.

    `b = (sqrt(1 + 4 t^2) - 1) / (2 t^2)` with `t = time_constant * sr / hop_length` frames (the
    positive root of `t^2 b^2 + b - 1 = 0`; librosa chose it to approximate the filter's half-power
    width). It is a little under `1 / t`.

    Example:
        >>> from specnorm.functional import pcen_smoothing_coef
        >>> round(pcen_smoothing_coef(0.4, 22050, 512), 5)
        0.05639
    """
    if not time_constant > 0:
        raise ValueError(f"time_constant must be positive (seconds), not {time_constant}")
    t = time_constant * sr / hop_length
    return (math.sqrt(1 + 4 * t**2) - 1) / (2 * t**2)


def _smooth_chunked(x: Tensor, b: Tensor) -> Tensor:
    "M[t] = (1 - b) M[t-1] + b x[t], M[-1] = 1, along the last axis: two matrix products."
    a, n = 1 - b, x.shape[-1]
    k = -(-n // _CHUNK)
    chunks = F.pad(x, (0, k * _CHUNK - n)).unflatten(-1, (k, _CHUNK))  # [..., F, K, L]
    j = torch.arange(_CHUNK, device=x.device)
    lag = j[:, None] - j[None, :]
    # Within a chunk, from a zero state: M[j] = sum_{i <= j} b a^(j - i) x[i].
    impulse = torch.where(lag >= 0, b[..., None] * a[..., None] ** lag.clamp(min=0), 0)  # [F, L, L]
    local = chunks @ impulse.transpose(-1, -2)
    # The state entering chunk c is the sum of the chunk ends before it, decayed, plus the initial state.
    decay = a**_CHUNK
    c = torch.arange(k, device=x.device)
    gap = c[:, None] - c[None, :] - 1
    carry_matrix = torch.where(gap >= 0, decay[..., None] ** gap.clamp(min=0), 0)  # [F, K, K]
    carry = (local[..., -1:].transpose(-1, -2) @ carry_matrix.transpose(-1, -2))[..., 0, :] + decay**c
    out = local + carry[..., None] * a[..., None] ** (j + 1)
    return out.flatten(-2)[..., :n]


def _smooth_scan(x: Tensor, b: Tensor) -> Tensor:
    "The same recursion as a doubling scan: after the step of shift s, M[t] holds x[t - 2s + 1 .. t]."
    a, n = 1 - b, x.shape[-1]
    out, shift = b * x, 1
    while shift < n:
        out = out + a**shift * F.pad(out[..., :-shift], (shift, 0))
        shift *= 2
    return out + a ** torch.arange(1, n + 1, device=x.device)  # decay of the initial state M[-1] = 1


def _smooth(x: Tensor, b: Tensor) -> Tensor:
    return (_smooth_chunked if x.device.type == "cpu" else _smooth_scan)(x, b)


def _per_channel(v, x: Tensor):
    "A per-channel `[F]` tensor shaped `[F, 1]` to broadcast over `[..., F, T]`; a number stays a number."
    return v.to(x.dtype).reshape(-1, 1) if torch.is_tensor(v) else v


def pcen(
    x: Tensor,
    sr: float = PCEN_DEFAULTS["sr"],
    hop_length: int = PCEN_DEFAULTS["hop_length"],
    gain: float | Tensor = PCEN_DEFAULTS["gain"],
    bias: float | Tensor = PCEN_DEFAULTS["bias"],
    power: float | Tensor = PCEN_DEFAULTS["power"],
    time_constant: float = PCEN_DEFAULTS["time_constant"],
    eps: float = PCEN_DEFAULTS["eps"],
    b: float | Tensor | None = None,
    max_size: int = 1,
    count: Tensor | None = None,
) -> Tensor:
    """PCEN of a non-negative linear spectrogram `x` `[..., F, T]` (frequency, then time, last).

    `M[t] = (1 - b) M[t-1] + b E[t]` along time, `PCEN = (E / (eps + M)^gain + bias)^power - bias^power`,
    as `librosa.pcen` (see the `specnorm.pcen` module docstring). Arguments are those of `librosa.pcen`;
    `gain`, `bias`, `power` and `b` may also be per-channel tensors of shape `[F]`. Negative, NaN or Inf
    input values give NaN or meaningless outputs. No host read checks them: with `count` (a float64
    one-element tensor on `x`'s device, `FiniteCheck.count_cell`), a positive number is added into it when
    the input has negative values or the output NaN or Inf, by the CUDA kernel in its pass, elsewhere by
    `count_nonfinite` and a minimum of the input (the `PCEN` transform's deferred check).

    Shape:
        `[..., F, T]` -> same shape, float (half precision as float32).

    Example:
        >>> import torch
        >>> from specnorm.functional import pcen
        >>> pcen(torch.ones(2, 40, 100), sr=16000, hop_length=160).shape
        torch.Size([2, 40, 100])
    """
    x = _float(x)
    if x.ndim < 2 or x.numel() == 0:
        raise ValueError(f"pcen expects a non-empty spectrogram [..., F, T], got shape {tuple(x.shape)}")
    if not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"max_size must be a positive integer, not {max_size}")
    if b is None:
        b = pcen_smoothing_coef(time_constant, sr, hop_length)
    elif not torch.is_tensor(b) and not 0 <= b <= 1:
        raise ValueError(f"b must be between 0 and 1, not {b}")
    if x.is_cuda and max_size == 1:  # one Triton pass (see specnorm.kernel_pcen); imported only here
        from . import kernel_pcen

        if kernel_pcen.use_kernel(x, gain, bias, power, b):
            return kernel_pcen.pcen_rows(x, b, gain, bias, power, eps, count)
    out = _pcen_eager(x, gain, bias, power, eps, b, max_size)
    if count is not None:
        count_nonfinite(out, count, invalid=x.detach().amin() < 0)
    return out


def _pcen_eager(x: Tensor, gain, bias, power, eps: float, b, max_size: int) -> Tensor:
    "`pcen` in PyTorch operations (the CPU path, training, and the kernel's reference)."
    ref = x
    if max_size > 1:  # maximum over neighbouring channels, as scipy's maximum_filter1d places it
        before = max_size // 2
        ref = F.pad(x.transpose(-1, -2), (before, max_size - 1 - before), value=-math.inf)
        ref = ref.unfold(-1, max_size, 1).amax(-1).transpose(-1, -2)
    b = _per_channel(b, x) if torch.is_tensor(b) else torch.full((1, 1), b, dtype=x.dtype, device=x.device)
    gain, bias, power = (_per_channel(v, x) for v in (gain, bias, power))
    agc = x * (eps + _smooth(ref, b)) ** -gain
    if not torch.is_tensor(power) and power == 0:
        return torch.log1p(agc)
    if not torch.is_tensor(bias) and bias == 0:
        return agc**power
    return bias**power * torch.expm1(power * torch.log1p(agc / bias))
