"""Normalization transforms: `SpecNormalize` (spectrogram batches) and `AudioNormalize` (waveform items).

`SpecNormalize` is standardization, `(x - mean) / std`, with statistics of the training set: one
mean and std for the whole spectrogram (`axes=(0, 2, 3)`, as fastai's `Normalize` does for images),
or one per frequency row (`axes=(0, 1, 3)`), which is global cepstral/feature mean and variance
normalization (CMVN: Viikki & Laurila, Speech Communication 25, 1998; Kaldi's `apply-cmvn`).
It is fastai's `Normalize` (fastai/data/transforms.py) re-done for `TensorImageBase` batches:
statistics come from the whole training set (`StatsRecorder`/`compute_stats`), never from one
batch, and the transform is one fused pass, `x * (1 / std) + (-mean / std)`.

`AudioNormalize` standardizes each waveform with its own mean and std: the per-item
`(x - mean(x)) / std(x)` of the reference fastaudio ESC-50 workflow, with silence defined as zeros.

The math is `specnorm.functional` (`affine_params`/`normalize`, `standardize`). Neither transform reads
a value on the host: NaN/Inf outputs are counted on the device (`specnorm.functional.FiniteCheck`) and
raised by `check()`, which the `CheckFinite` callback calls after every epoch and validation pass.
"""

from collections.abc import Sequence

import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.data.transforms import DisplayedTransform, Normalize
from fastai.torch_core import TensorImage, TensorImageBase, TensorMask
from fasttransform import Pipeline

from .audio import AudioTensor
from .functional import (
    AUDIO_SILENCE_EPS,
    GLOBAL_AXES,
    SPEC_STD_EPS,
    FiniteCheck,
    affine,
    affine_layout,
    affine_params,
    check_axes,
    check_eps,
    floor_std,
    standardize,
    valid_mask,
)

__all__ = ["AUDIO_SILENCE_EPS", "SPEC_STD_EPS", "AudioNormalize", "CheckFinite", "SpecNormalize"]
# Per-device caches of expanded scale/shift are dropped beyond this many batch shapes.
_MAX_CACHED = 8


def _as_plain(v):
    "A plain float32 CPU `torch.Tensor` (never a `TensorBase` subclass) from a tensor, array or number."
    if isinstance(v, torch.Tensor):
        return v.detach().as_subclass(torch.Tensor).to("cpu", torch.float32)
    return torch.as_tensor(v, dtype=torch.float32)


def _as_statistic(v, axes, name):
    "`v` as a 4-D statistic `[1, ...]`, size 1 on every dim in `axes`."
    v = _as_plain(v)
    if v.ndim == 4:
        wrong = [d for d in axes if v.shape[d] != 1]
        if wrong:
            raise ValueError(
                f"{name} has shape {tuple(v.shape)}, but dims {wrong} are reduced (axes={axes}) and must have size 1"
            )
        return v
    if v.numel() == 1:
        return v.reshape(1, 1, 1, 1)
    kept = [d for d in range(4) if d not in axes]
    if v.squeeze().ndim == 1 and len(kept) == 1:
        shape = [1, 1, 1, 1]
        shape[kept[0]] = v.numel()
        return v.reshape(shape)
    raise ValueError(
        f"{name} of shape {tuple(v.shape)} does not fit axes={axes}: give a number, a vector for "
        f"the one kept dim, or a 4-D tensor with size 1 on dims {axes}"
    )


def _stats_loader(dl, tfms):
    "A loader over all of `dl`'s items (in order, none dropped) applying only the batch transforms `tfms`."
    # `DataLoader.new`, not `TfmdDL.new`: the latter runs (and caches types from) the half-set-up pipeline.
    return DataLoader.new(
        dl, dl.dataset, type(dl), shuffle=False, drop_last=False, do_setup=False, after_batch=list(tfms)
    )


class SpecNormalize(Normalize):
    """Standardize spectrogram batches with training-set statistics: `(x - mean) / std`, invertible.

    Applies to `AudioSpectrogram` batches and every other `TensorImageBase` subclass (`TensorImage`...)
    except `TensorMask`, and returns the input's type with its metadata. Plain `torch.Tensor` inputs
    pass through untouched (fastai type dispatch), as do masks.

    Statistics are plain float32 CPU tensors (`.mean`, `.std`); the `scale = 1 / std` and
    `shift = -mean / std` of the fused pass (`specnorm.functional.affine_params`) are computed once and
    cached per device and batch shape, so no batch reads a value on the host, the first one included.
    `std` is floored at `eps * |mean|` so a constant channel maps to ~0, never Inf; a channel whose
    floored std is still 0 (all zeros, or constant with `eps=0`) is only centred. `decodes` is the
    exact inverse, so `show_batch` shows dB.

    Padding: batches carrying `lengths` (valid frames, set by `AudioToSpec` from the waveforms' valid
    samples) are computed from their valid frames only in `setups` (`compute_stats` masks the padding),
    and their padded frames come out as 0, the standardized floor (decoding gives the mean there).

    Without statistics, `setups` computes them with `compute_stats` over the whole training split
    (or a random `fraction` of it) through the batch transforms that come before it, when the
    `DataBlock` builds its `DataLoaders`; the validation split is never used.

    Args:
        mean, std: statistics: numbers, vectors for the one kept dim, or 4-D tensors with size 1 on
            `axes` (as `StatsRecorder.mean`/`.std` give). `None` (both): computed in `setups`.
        axes (tuple): the reduced dims: `GLOBAL_AXES = (0, 2, 3)` one value per channel (global for mono),
            `CHANNEL_AXES = (0, 1, 3)` one value per frequency row.
        eps (float): relative floor on std (`SPEC_STD_EPS = 1e-3`), a finite number >= 0.
        fraction (float): share of the training items `setups` reads (a random subset, `compute_stats`).
        progress (bool): progress bar while `setups` computes statistics.
        check_finite (bool): count the normalized batches that hold NaN or Inf, on the device (one
            min-max reduction per batch, no host sync); `check()` raises naming the first of them, and
            the `CheckFinite` callback calls it after every epoch and validation pass. `False` skips it.
        red_dims (tuple): `StatsRecorder`'s name for `axes`, accepted as an alias.

    Shape:
        `[B, C, F, T]` batches (or `[C, F, T]` items) -> same shape.

    Example:
        >>> import torch
        >>> from specnorm.audio import AudioSpectrogram
        >>> from specnorm.normalize import SpecNormalize
        >>> x = AudioSpectrogram(torch.randn(2, 1, 4, 5) * 10 - 50, sr=16000)
        >>> norm = SpecNormalize(-50.0, 10.0)
        >>> y = norm(x)
        >>> type(y).__name__, y.sr, torch.allclose(norm.decode(y), x, atol=1e-4)
        ('AudioSpectrogram', 16000, True)
    """

    def __init__(
        self,
        mean=None,
        std=None,
        axes: Sequence[int] = GLOBAL_AXES,
        eps: float = SPEC_STD_EPS,
        fraction: float = 1.0,
        progress: bool = True,
        check_finite: bool = True,
        red_dims: Sequence[int] | None = None,
    ):
        DisplayedTransform.__init__(self)
        if red_dims is not None:  # StatsRecorder's name for the same idea, accepted as an alias
            axes = red_dims
        axes = check_axes(axes, 4)
        if 0 not in axes:
            raise ValueError(f"axes must include the batch dim 0 (statistics of a training set), got {axes}")
        eps = check_eps(eps)
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.axes, self.eps, self.fraction = axes, eps, fraction
        self.progress, self.check_finite = progress, check_finite
        self._mean = self._std = None
        self._cache = {}
        # Standardized outputs sit many orders of magnitude below float32's range, so a sum (a third of the
        # cost of a min-max on the CPU) detects NaN/Inf; an overflowing sum is reported as what it is.
        self.finite = FiniteCheck(type(self).__name__, reduction="sum")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (then setups computes them)")
        if mean is not None:
            self.set_stats(mean, std)

    # -- statistics ------------------------------------------------------------------------------
    @property
    def mean(self):
        return self._mean

    @mean.setter
    def mean(self, v):
        self.set_stats(v, self._std)

    @property
    def std(self):
        return self._std

    @std.setter
    def std(self, v):
        self.set_stats(self._mean, v)

    @property
    def has_stats(self):
        return self._mean is not None and self._std is not None

    def set_stats(self, mean, std):
        "Set the statistics (either may be `None` while the other is being set); clears the device cache."
        self._cache = {}
        self._mean = None if mean is None else _as_statistic(mean, self.axes, "mean")
        self._std = None if std is None else _as_statistic(std, self.axes, "std")
        if not self.has_stats:
            return
        for name, v in (("mean", self._mean), ("std", self._std)):
            bad = int((~torch.isfinite(v)).sum())  # statistics are set once, on the CPU: reading them is free
            if bad:
                raise ValueError(f"SpecNormalize: {name} holds {bad} NaN or Inf values")
        if (self._std < 0).any():
            raise ValueError(f"SpecNormalize: std must be >= 0, got min {self._std.min().item()}")
        try:
            shape = torch.broadcast_shapes(self._mean.shape, self._std.shape)
        except RuntimeError:
            raise ValueError(
                f"mean {tuple(self._mean.shape)} and std {tuple(self._std.shape)} do not broadcast"
            ) from None
        mean, std = self._mean.double().expand(shape), self._std.double().expand(shape)
        self._scale, self._shift = affine_params(mean, std, self.eps)
        self._dscale = floor_std(mean, std, self.eps).clamp_min(1 / torch.finfo(torch.float32).max).float()
        self._dshift = mean.float().contiguous()
        # One global value: python floats (read here, once, on the CPU); the pass is `shift + scale * x`.
        pairs = {False: (self._scale, self._shift), True: (self._dscale, self._dshift)}
        one = self._scale.numel() == 1
        self._scalars = {d: (float(a), float(b)) for d, (a, b) in pairs.items()} if one else None

    @classmethod
    def from_stats(cls, stats, std=None, axes=None, **kwargs):
        """From a `StatsRecorder` (its `mean`, `std` and `red_dims`), or from `mean` and `std` arrays.

        Example:
            >>> from specnorm.normalize import SpecNormalize
            >>> SpecNormalize.from_stats([-50.0] * 201, [10.0] * 201, axes=(0, 1, 3)).mean.shape
            torch.Size([1, 1, 201, 1])
        """
        if std is None:
            if not all(hasattr(stats, a) for a in ("mean", "std")):
                raise TypeError(f"from_stats takes a StatsRecorder or (mean, std), got {type(stats).__name__}")
            if axes is None:
                axes = getattr(stats, "red_dims", None) or GLOBAL_AXES
            return cls(stats.mean, stats.std, axes=axes, **kwargs)
        return cls(stats, std, axes=GLOBAL_AXES if axes is None else axes, **kwargs)

    @classmethod
    def from_dls(cls, dls, axes=GLOBAL_AXES, fraction=1.0, progress=True, **kwargs):
        """Statistics from the training split of `dls`, through its batch transforms before normalization.

        Example:
            >>> norm = SpecNormalize.from_dls(dls, axes=(0, 1, 3))   # doctest: +SKIP
            >>> dls.after_batch.add(norm)                             # doctest: +SKIP
        """
        norm = cls(axes=axes, fraction=fraction, progress=progress, **kwargs)
        dl = dls.train if isinstance(dls, DataLoaders) else dls
        before = [
            t
            for t in getattr(getattr(dl, "after_batch", None), "fs", [])
            if not isinstance(t, Normalize) and t.order <= norm.order
        ]
        norm._compute(dl, before)
        return norm

    # Both signatures, so fastai's one-batch `Normalize.setups(dl: DataLoader)` can never be the one dispatched.
    def setups(self, dl: DataLoader):
        self._setups(dl)

    def setups(self, dl):  # noqa: F811
        self._setups(dl)

    def _setups(self, dl):
        "Compute the statistics from the training split of `dl` if they are missing."
        if self.has_stats or dl is None:
            return
        dl = dl.train if isinstance(dl, DataLoaders) else dl
        # Inside `Pipeline.setup` the pipeline holds exactly the transforms that come before this one.
        before = list(getattr(getattr(dl, "after_batch", None), "fs", []))
        try:
            self._compute(dl, before)
        except AttributeError as e:  # `Transform.setup` would swallow it and leave no statistics
            raise RuntimeError(f"SpecNormalize.setups failed: {e!r}") from e

    def _compute(self, dl, before):
        from .stats import compute_stats  # lazily: stats imports the data stack

        if isinstance(getattr(dl, "after_batch", None), Pipeline):
            dl = _stats_loader(dl, before)
        (recorder,) = compute_stats(dl, red_dims=(self.axes,), fraction=self.fraction, progress=self.progress)
        self.set_stats(recorder.mean, recorder.std)

    # -- device cache --------------------------------------------------------------------------
    def _params(self, x, decode=False):
        "(scale, shift) for `x`: python floats for one global value, else statistic-shaped tensors on `x`'s device."
        if not self.has_stats:
            raise ValueError(
                "SpecNormalize has no statistics: pass mean and std, use from_stats/from_dls, "
                "or put it in a DataBlock's batch_tfms so setups computes them"
            )
        if self._scalars is not None:
            key = (decode, x.device, x.dtype)
            if key not in self._cache:  # the shift as a 0-d tensor filled on the device: no copy, no sync
                scale, shift = self._scalars[decode]
                # (empty + fill_, not torch.full: a 0-d torch.full operand makes torch.add 9x slower on the CPU)
                self._cache[key] = (scale, torch.empty((), dtype=x.dtype, device=x.device).fill_(shift))
            return self._cache[key]
        scale, shift = (self._dscale, self._dshift) if decode else (self._scale, self._shift)
        for d, n in enumerate(scale.shape):
            if n != 1 and n != x.shape[d]:
                raise ValueError(
                    f"SpecNormalize has statistics of shape {tuple(scale.shape)} (axes={self.axes}) "
                    f"but the batch has shape {tuple(x.shape)}: dim {d} has {x.shape[d]}, not {n}. "
                    "Were they computed with the same spectrogram settings?"
                )
        # Statistic-shaped ([1, 1, F, 1]) and broadcast by the multiply and the add: on the CPU that is faster
        # than operands expanded to the batch's shape, which cost a read of their own (measured 1.55x vs 2.1x a
        # clone of [64, 1, 201, 401]).
        key = (decode, x.device, x.dtype)
        if key not in self._cache:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            # One host-to-device copy that does not wait for the device (no sync).
            self._cache[key] = tuple(v.to(dtype=x.dtype).to(x.device, non_blocking=True) for v in (scale, shift))
        return self._cache[key]

    def check(self) -> None:
        "Raise if a batch normalized since the last check held NaN or Inf (reads device counts: one host sync)."
        self.finite.check()

    def __getstate__(self):
        # Pickled (Learner.export) with CPU statistics only; device copies are rebuilt on use.
        return {**self.__dict__, "_cache": {}}

    # -- transform -----------------------------------------------------------------------------
    @staticmethod
    def _fused(batch, scale):
        "Whether the CUDA `batch` takes `kernel_affine` (dispatch rule and layouts: that module's docstring)."
        from . import kernel_affine

        if not kernel_affine.enabled(batch):
            return False
        return batch.is_contiguous() if isinstance(scale, float) else affine_layout(batch, scale.shape) is not None

    def _apply(self, x, decode):
        t = x.as_subclass(torch.Tensor)
        if not t.is_floating_point():
            t = t.float()
        if t.ndim not in (3, 4):
            raise ValueError(f"SpecNormalize takes [B, C, F, T] batches or [C, F, T] items, got shape {tuple(t.shape)}")
        batch = t if t.ndim == 4 else t[None]
        scale, shift = self._params(batch, decode)
        mask = None if decode else valid_mask(x)
        check = self.check_finite and not decode
        if mask is None and batch.is_cuda and self._fused(batch, scale):
            # One Triton kernel: the affine, and the count of NaN/Inf outputs added into the batch's mark.
            from . import kernel_affine  # imports triton: only once a CUDA batch arrives

            if isinstance(scale, float):
                scale, shift = self._scalars[decode]
            y = kernel_affine.affine(batch, scale, shift, self.finite.count_cell(t) if check else None)
            check = False
        elif isinstance(scale, float):
            y = torch.add(shift, batch, alpha=scale)
        else:
            y = affine(batch, scale, shift)
        y = y if t.ndim == 4 else y[0]
        if mask is not None:  # padded frames: 0, the standardized floor (they are masked out of the statistics)
            y = y.masked_fill_(~mask, 0)
        if check:
            self.finite.update(y)
        y = y.as_subclass(type(x))
        y.set_meta(x, as_copy=True)
        y.standardized = not decode  # so plots label standardized values as such, not as dB
        return y

    def encodes(self, x: TensorImageBase):
        return self._apply(x, decode=False)

    def encodes(self, x: TensorImage):  # noqa: F811
        return self._apply(x, decode=False)  # overrides fastai's Normalize

    def encodes(self, x: TensorMask):  # noqa: F811
        return x  # masks are labels, not signal

    def decodes(self, x: TensorImageBase):
        return self._apply(x, decode=True)

    def decodes(self, x: TensorImage):  # noqa: F811
        return self._apply(x, decode=True)

    def decodes(self, x: TensorMask):  # noqa: F811
        return x


class AudioNormalize(DisplayedTransform):
    """Standardize each waveform with its own statistics: `(x - mean(x)) / std(x)`.

    An item transform for `item_tfms` (the class or an instance). The std is the population std
    (divisor n), so each output has std exactly 1. Silence (std <= `eps * max(1, |mean|)`, e.g. all
    zeros or a constant) becomes zeros. NaN or Inf samples make the item's output NaN; outputs are
    checked on the device (no host read) and `check()` raises naming the first bad item. In DataLoader
    workers the counts stay in the workers, and the NaN reaches `AudioToSpec`, whose check reports it.
    The sample rate and other metadata are kept. On a batch `[B, C, T]` each item gets its own statistics.

    `order = 20`: after `Resample` (11), `DownmixMono` (10) and `ResizeSignal` (12), so the
    statistics are those of exactly the samples the model sees after cropping. Padding does not count:
    a waveform with `lengths` (and `pad_before`), as `ResizeSignal` and the batches of `get_dls` carry,
    is standardized over its valid samples, and its padding stays 0 (`specnorm.functional.valid_mask`).

    Args:
        per_channel (bool): one mean and std per channel of a multichannel item; by default one
            over all channels, which keeps the level differences between channels.
        eps (float): silence threshold (`AUDIO_SILENCE_EPS = 1e-6`, -120 dBFS).

    Shape:
        `[C, T]` items or `[B, C, T]` batches -> same shape.

    Example:
        >>> import torch
        >>> from specnorm.audio import AudioTensor
        >>> from specnorm.normalize import AudioNormalize
        >>> y = AudioNormalize()(AudioTensor(torch.randn(1, 16000) * 0.1 + 0.2, sr=16000))
        >>> y.sr, abs(y.mean().item()) < 1e-6, round(y.std(correction=0).item(), 4)
        (16000, True, 1.0)
    """

    order = 20

    def __init__(self, per_channel: bool = False, eps: float = AUDIO_SILENCE_EPS):
        super().__init__()
        self.per_channel, self.eps = per_channel, check_eps(eps)
        self.finite = FiniteCheck(type(self).__name__)

    def check(self) -> None:
        "Raise if a signal since the last check held NaN or Inf (reads device counts: one host sync)."
        self.finite.check()

    def encodes(self, x: AudioTensor):
        if x.shape[-1] == 0:
            raise ValueError(f"AudioNormalize: got an empty signal of shape {tuple(x.shape)}")
        y = standardize(x, (-1,) if self.per_channel else (-2, -1), self.eps, mask=valid_mask(x))
        self.finite.update(y)
        y = y.as_subclass(type(x))
        y.set_meta(x, as_copy=True)
        return y


def _checked_transforms(learn):
    "Every transform with a `FiniteCheck` in the learner's DataLoaders (item and batch pipelines)."
    seen, found = set(), []
    for dl in getattr(learn, "dls", None) or []:
        for pipe in (getattr(dl, name, None) for name in ("after_item", "before_batch", "after_batch")):
            for t in getattr(pipe, "fs", []):
                if isinstance(getattr(t, "finite", None), FiniteCheck) and id(t) not in seen:
                    seen.add(id(t))
                    found.append(t)
    return found


class CheckFinite(Callback):
    """Raise the deferred NaN/Inf errors of the DataLoaders' transforms where training already syncs.

    The transforms of specnorm (`SpecNormalize`, `InstanceSpecNorm`, `SlidingSpecNorm`, `PCEN`,
    `AudioNormalize`, `ShortTimeAudioNormalize`, `AudioToSpec`) count bad batches on the device, with
    no per-batch host sync. This callback reads those counts after every training epoch and every
    validation pass (`get_preds` included) and raises the first transform's `ValueError`, which names
    the transform, how many batches since the last check were bad, the first of them (counting from 0)
    and its shape. Item transforms running in DataLoader workers keep their counts in the workers;
    their NaN outputs reach the batch transforms, whose checks report them.

    Example:
        >>> learn = Learner(dls, model, cbs=CheckFinite())  # doctest: +SKIP
    """

    order = 90  # after the recorders and metrics, before the progress output of the next epoch

    def _check(self):
        for t in _checked_transforms(self.learn):
            t.check()

    def after_epoch(self):
        self._check()

    def after_validate(self):
        self._check()
