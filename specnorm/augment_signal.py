"""Waveform augmentations (fastaudio's `augment.signal`): shifts, colored noise, volume, cutout, sample loss.

Thin fastai transforms over the pure torch functions of `augment_functional`. Each works on an item
`[C, T]` and on a batch `[B, C, T]` on the batch's device; every item of a batch gets its own random
draw (shift, level, gain, region). They are `RandTransform`s: they apply on the training split only
(`split_idx=0`, as fastai's image augmentations do), so validation and test batches stay untouched.

Probabilities follow fastaudio: for the plain names (`SignalShifter`, `AddNoise`, `ChangeVolume`,
`SignalCutout`, `SignalLoss`) `p` is the probability that a call applies (fastai's convention, drawn
from Python's `random`); for the `...GPU` names `p` is the probability for each item of the batch,
drawn on the device. Random values come from torch's generator of the batch's device (`torch.manual_seed`
or fastai's `set_seed` makes runs reproducible), never from the tensor's values, and no transform
reads a tensor value back on the host: a batch costs no host sync.
"""

from enum import Enum

import torch
from fastai.vision.augment import RandTransform

from .audio import AudioSpectrogram, AudioTensor
from .augment_functional import (
    NoiseColor,
    add_noise_,
    colored_noise,
    no_information_value,
    random_mask,
    region_mask,
    shift_signal,
)

__all__ = [
    "AddNoise",
    "AddNoiseGPU",
    "AudioPadType",
    "ChangeVolume",
    "ChangeVolumeGPU",
    "NoiseColor",
    "SignalCutout",
    "SignalCutoutGPU",
    "SignalLoss",
    "SignalLossGPU",
    "SignalShifter",
]


class AudioPadType(str, Enum):
    """Padding modes of `ResizeSignal` and `CropTime`; each member equals its string (`'zeros'`...).

    Example:
        >>> AudioPadType.Zeros_After == "zeros_after"
        True
    """

    Zeros = "zeros"
    Zeros_After = "zeros_after"
    Repeat = "repeat"


def as_batch(x: torch.Tensor, item_dims: int) -> tuple[torch.Tensor, bool]:
    "`x` as a plain tensor batch: `(batch, was_item)`; an item of `item_dims` dims gets a batch axis."
    t = x.as_subclass(torch.Tensor)
    return (t[None], True) if t.ndim == item_dims else (t, False)


def retype(out: torch.Tensor, like: torch.Tensor, was_item: bool) -> torch.Tensor:
    "`out` back in `like`'s type and metadata, without the batch axis `as_batch` added."
    out = (out[0] if was_item else out).as_subclass(type(like))
    out.set_meta(like, as_copy=True)
    return out


def check_p(p: float) -> None:
    "Raise a `ValueError` unless `p` is a probability."
    if not 0 <= p <= 1:
        raise ValueError(f"p is a probability in [0, 1], not {p!r}")


class _Augment(RandTransform):
    """Base of the augmentations: `item_dims` per input type, `p` per call or (`per_item`) per item.

    Subclasses implement `_augment(batch, like)` on a plain tensor batch and return a tensor.
    """

    order = 30  # after the waveform item transforms and AudioNormalize (20), before AudioToSpec (50)
    per_item = False

    def __init__(self, p: float = 1.0):
        check_p(p)
        super().__init__(p=p)

    def before_call(self, b, split_idx):
        if self.per_item:
            self.do = True  # `p` is drawn per item, on the device
        else:
            super().before_call(b, split_idx)

    def _item_mask(self, n, device):
        "Which items of a batch of `n` to change: `[n, 1, 1]` bool, or None for all."
        if not self.per_item or self.p >= 1:
            return None
        return random_mask([n, 1, 1], self.p, device=device)

    def _apply(self, x, item_dims):
        batch, was_item = as_batch(x, item_dims)
        return retype(self._augment(batch, x), x, was_item)

    def encodes(self, x: AudioTensor):
        return self._apply(x, 2)


class SignalShifter(_Augment):
    """Shift the signal (or a spectrogram's frames) in time by a random amount, zero-filling or rolling.

    Each item's shift is uniform in `[-max, max]` (`direction=0`), `[0, max]` (`1`, later) or
    `[-max, 0]` (`-1`, earlier), where `max` is `max_pct` of the length, or `max_time` seconds when given.

    Args:
        p (float): probability that a call shifts.
        max_pct (float): largest shift as a fraction of the length.
        max_time (float or None): largest shift in seconds (overrides `max_pct`).
        direction (int): -1, 0 or 1.
        roll (bool): wrap around instead of filling: a waveform gets 0 (silence), a spectrogram
            `no_information_value` (0 when standardized, else the clip's mean), as the masks do.

    Example:
        >>> from specnorm.util import apply_transform, test_audio_tensor
        >>> inp, out = apply_transform(SignalShifter(p=1., max_pct=0.5), test_audio_tensor())
        >>> out.shape == inp.shape
        True
    """

    def __init__(
        self,
        p: float = 0.5,
        max_pct: float = 0.2,
        max_time: float | None = None,
        direction: int = 0,
        roll: bool = False,
    ):
        if direction not in (-1, 0, 1):
            raise ValueError(f"direction must be -1 (earlier), 0 (either) or 1 (later), not {direction!r}")
        super().__init__(p=p)
        self.max_pct, self.max_time, self.direction, self.roll = max_pct, max_time, direction, roll

    def _shift(self, batch, max_shift, fill=0.0):
        u = torch.rand(batch.shape[0], device=batch.device)
        u = 2 * u - 1 if self.direction == 0 else self.direction * u
        return shift_signal(batch, (u * max_shift).long(), roll=self.roll, fill=fill)  # .long() truncates to 0

    def encodes(self, x: AudioTensor):
        batch, was_item = as_batch(x, 2)
        max_shift = self.max_pct * x.nsamples if self.max_time is None else self.max_time * x.sr
        return retype(self._shift(batch, max_shift), x, was_item)

    def encodes(self, x: AudioSpectrogram):  # noqa: F811
        batch, was_item = as_batch(x, 3)
        frames_per_s = x.sr / x.hop_length if self.max_time is not None else None
        max_shift = self.max_pct * x.width if self.max_time is None else self.max_time * frames_per_s
        return retype(self._shift(batch, max_shift, no_information_value(batch, x)), x, was_item)


def _check_color(color):
    if not NoiseColor.valid(color):
        raise ValueError(f"color must be a noise exponent in [-2, 2] (see NoiseColor), not {color!r}")


class AddNoise(_Augment):
    """Add colored noise whose std is `noise_level` times the item's mean absolute amplitude.

    Args:
        noise_level (float): noise std relative to the mean absolute amplitude of each item.
        color (float): noise exponent (`NoiseColor.White`, `Pink`, `Brown`, `Blue`, `Violet`, or any real
            in `[-2, 2]`).
        p (float): probability that a call adds noise.

    Example:
        >>> from specnorm.util import apply_transform, test_audio_tensor
        >>> inp, out = apply_transform(AddNoise(color=NoiseColor.Pink, p=1.), test_audio_tensor())
        >>> bool((out != inp).any())
        True
    """

    def __init__(self, noise_level: float = 0.05, color: float = NoiseColor.White, p: float = 0.5):
        _check_color(color)
        super().__init__(p=p)
        self.noise_level, self.color = noise_level, color

    def _augment(self, batch, like):
        level = self.noise_level * batch.abs().mean(tuple(range(1, batch.ndim)), keepdim=True)
        return batch + level * colored_noise(batch.shape, self.color, device=batch.device).to(batch.dtype)


class AddNoiseGPU(_Augment):
    """Add colored noise to each item with probability `p`, at a level uniform in `[min_level, max_level]`
    times the item's standard deviation. Works on waveforms and on spectrograms.

    Args:
        p (float): probability per item.
        min_level, max_level (float): range of the noise std relative to the item's std.
        color (float): noise exponent (see `AddNoise`).

    Example:
        >>> import torch
        >>> from specnorm.util import apply_transform, test_audio_tensor
        >>> x = AudioTensor(torch.randn(8, 1, 1000), sr=8000)
        >>> inp, out = apply_transform(AddNoiseGPU(min_level=0.1, max_level=0.1), x)
        >>> round((out - inp).std().item(), 1)
        0.1
    """

    per_item = True

    def __init__(
        self, p: float = 1.0, min_level: float = 0.0, max_level: float = 0.05, color: float = NoiseColor.White
    ):
        _check_color(color)
        super().__init__(p=p)
        self.min_level, self.max_level, self.color = min_level, max_level, color

    def _augment(self, batch, like):
        return add_noise_(batch.clone(), self.color, self.min_level, self.max_level, self.p)

    def encodes(self, x: AudioSpectrogram):
        return self._apply(x, 3)


class ChangeVolumeGPU(_Augment):
    """Multiply each item, with probability `p`, by a gain uniform in `[lower, upper]`.

    A gain `g` changes the level by `20 * log10(g)` dB (0.5: -6.0 dB, 1.5: +3.5 dB).

    Example:
        >>> import torch
        >>> from specnorm.util import apply_transform, test_audio_tensor
        >>> inp, out = apply_transform(ChangeVolumeGPU(p=1., lower=0.5, upper=0.5), test_audio_tensor())
        >>> torch.allclose(out, inp / 2)
        True
    """

    per_item = True

    def __init__(self, p: float = 0.5, lower: float = 0.5, upper: float = 1.5):
        if not 0 <= lower <= upper:
            raise ValueError(f"the gain range must satisfy 0 <= lower <= upper, got lower={lower}, upper={upper}")
        super().__init__(p=p)
        self.lower, self.upper = lower, upper

    def _augment(self, batch, like):
        shape = [batch.shape[0]] + [1] * (batch.ndim - 1)
        gain = torch.rand(shape, device=batch.device) * (self.upper - self.lower) + self.lower
        keep = self._item_mask(batch.shape[0], batch.device)
        if keep is not None:
            gain = torch.where(keep, gain, torch.ones((), device=batch.device))
        return batch * gain.to(batch.dtype)


class ChangeVolume(ChangeVolumeGPU):
    "`ChangeVolumeGPU` applied by call: with probability `p`, every item gets its own gain in `[lower, upper]`."

    per_item = False


class _CutAugment(_Augment):
    "Silences a share of each item between `min_cut_pct` and `max_cut_pct` (`SignalCutoutGPU`, `SignalLossGPU`)."

    per_item = True

    def __init__(self, p: float = 0.5, min_cut_pct: float = 0.0, max_cut_pct: float = 0.15):
        if not 0 <= min_cut_pct <= max_cut_pct <= 1:
            raise ValueError(f"need 0 <= min_cut_pct <= max_cut_pct <= 1, got {min_cut_pct}, {max_cut_pct}")
        super().__init__(p=p)
        self.min_cut_pct, self.max_cut_pct = min_cut_pct, max_cut_pct


class SignalCutoutGPU(_CutAugment):
    """Silence one contiguous region of each item (all channels) with probability `p`; the region's length
    is uniform in `[min_cut_pct, max_cut_pct]` of the signal.

    Example:
        >>> import torch
        >>> from specnorm.util import apply_transform
        >>> x = AudioTensor(torch.ones(1, 1000), sr=1000)
        >>> inp, out = apply_transform(SignalCutoutGPU(p=1., min_cut_pct=0.1, max_cut_pct=0.1), x)
        >>> int((out == 0).sum())
        100
    """

    def _augment(self, batch, like):
        n, _, s = batch.shape
        mask = region_mask(n, s * self.min_cut_pct, s * self.max_cut_pct, s, device=batch.device).view(n, 1, s)
        keep = self._item_mask(n, batch.device)
        if keep is not None:
            mask = mask & keep
        return batch.masked_fill(mask, 0.0)


class SignalCutout(SignalCutoutGPU):
    "`SignalCutoutGPU` applied by call (probability `p`), with a length uniform in `[0, max_cut_pct]`."

    per_item = False

    def __init__(self, p: float = 0.5, max_cut_pct: float = 0.15):
        super().__init__(p=p, min_cut_pct=0.0, max_cut_pct=max_cut_pct)


class SignalLossGPU(_CutAugment):
    """Silence scattered samples: each item, with probability `p`, loses each sample (the same across its
    channels) with a probability uniform in `[min_cut_pct, max_cut_pct]`.

    Example:
        >>> import torch
        >>> from specnorm.util import apply_transform
        >>> x = AudioTensor(torch.ones(1, 10000), sr=1000)
        >>> inp, out = apply_transform(SignalLossGPU(p=1., min_cut_pct=0.2, max_cut_pct=0.2), x)
        >>> round((out == 0).float().mean().item(), 1)
        0.2
    """

    def _augment(self, batch, like):
        n, _, s = batch.shape
        rate = torch.rand([n, 1, 1], device=batch.device) * (self.max_cut_pct - self.min_cut_pct) + self.min_cut_pct
        mask = random_mask([n, 1, s], rate, device=batch.device)
        keep = self._item_mask(n, batch.device)
        if keep is not None:
            mask = mask & keep
        return batch.masked_fill(mask, 0.0)


class SignalLoss(SignalLossGPU):
    "`SignalLossGPU` applied by call (probability `p`), with a loss rate uniform in `[0, max_loss_pct]`."

    per_item = False

    def __init__(self, p: float = 0.5, max_loss_pct: float = 0.15):
        super().__init__(p=p, min_cut_pct=0.0, max_cut_pct=max_loss_pct)
