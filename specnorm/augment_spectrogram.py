"""Spectrogram transforms and augmentations (fastaudio's `augment.spectrogram`): cropping in time,
SpecAugment masking, rolling, deltas and resizing.

SpecAugment is Park et al. 2019 (https://arxiv.org/abs/1904.08779): bands of frequency rows and of
time frames are replaced by a value that carries no information. What that value is depends on the
representation the mask lands on:

- after `SpecNormalize`, `InstanceSpecNorm` or `SlidingSpecNorm` (they mark their output
  `standardized=True`), 0: the mean the normalization maps to;
- before them (dB, power or MFCC values), the clip's mean: each item's per-channel mean over the whole
  spectrogram (the fill of `augment_functional.mask_along_axis` when `mask_val=None`).

`mask_val` overrides both. The masks and `SGRoll` are augmentations (`RandTransform`s applied on the
training split only, `split_idx=0`), ordered after the normalizations (`order = 100`) so that a mask
written after `SpecNormalize` fills with its 0. `CropTime`, `Delta` and `TfmResize` change the shape
and apply on every split (`order = 60`: after `AudioToSpec`, before the normalizations). All work on
an item `[C, F, T]` and on a batch `[B, C, F, T]` on its device, draw their random numbers there (or
from Python's `random` per call), and read no tensor value back on the host.
"""

import random
import warnings

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from fastai.vision.augment import RandTransform

from . import augment_functional as functional
from .audio import AudioSpectrogram, AudioTensor
from .augment_functional import no_information_value, random_mask, shift_signal
from .augment_signal import AudioPadType, as_batch, check_p, retype

__all__ = [
    "CropTime",
    "Delta",
    "DeltaGPU",
    "MaskFreq",
    "MaskFreqGPU",
    "MaskTime",
    "MaskTimeGPU",
    "SGRoll",
    "SpectrogramTransform",
    "TfmResize",
    "TfmResizeGPU",
]


class SpectrogramTransform(RandTransform):
    """Base of the spectrogram transforms: applied to an `AudioTensor` (a waveform), they warn and pass it on.

    A waveform reaching a spectrogram transform is usually a transform list in the wrong order; the
    warning names the transform and the shape.
    """

    split_idx, order = None, 60

    def __init__(self, p: float = 1.0):
        check_p(p)
        super().__init__(p=p)

    def before_call(self, b, split_idx: int | None) -> None:
        super().before_call(b, split_idx)
        for o in b if isinstance(b, tuple) else (b,):
            if isinstance(o, AudioTensor):
                warnings.warn(
                    f"{type(self).__name__} is a spectrogram transform but got an AudioTensor of shape "
                    f"{tuple(o.shape)}: put it after AudioToSpec",
                    stacklevel=3,
                )

    def encodes(self, x: AudioTensor):
        return x


def _check_pad_mode(pad_mode):
    if pad_mode not in tuple(AudioPadType):
        raise ValueError(f"pad_mode must be one of {[m.value for m in AudioPadType]}, not {pad_mode!r}")
    return AudioPadType(pad_mode)


class CropTime(SpectrogramTransform):
    """Crop or pad the frames to `duration` milliseconds of signal.

    The width is that of a signal of `duration` ms (`round(duration * sr / 1000) // hop_length + 1`
    frames, centred STFT), so `AudioToSpec` then `CropTime(d)` and `ResizeSignal(d)` then `AudioToSpec`
    give the same shape. Longer spectrograms are cropped at a random frame on the training split and
    from the first frame elsewhere; shorter ones are padded with zeros (`'zeros'`: split before and
    after, at random on the training split; `'zeros_after'`) or repeated (`'repeat'`). One crop per call.

    Args:
        duration (float): milliseconds.
        pad_mode (str or AudioPadType): `'zeros'`, `'zeros_after'` or `'repeat'`.

    Example:
        >>> import torch
        >>> sg = AudioSpectrogram(torch.zeros(1, 64, 251), sr=16000, hop_length=128)
        >>> CropTime(1000)(sg).shape
        torch.Size([1, 64, 126])
    """

    def __init__(self, duration: float, pad_mode: AudioPadType | str = AudioPadType.Zeros):
        if duration <= 0:
            raise ValueError(f"duration must be positive (milliseconds), not {duration}")
        super().__init__()
        self.duration, self.pad_mode, self.training = duration, _check_pad_mode(pad_mode), False

    def before_call(self, b, split_idx: int | None) -> None:
        super().before_call(b, split_idx)
        self.training = split_idx == 0

    def encodes(self, x: AudioSpectrogram):
        width = round(self.duration * x.sr / 1000) // x.hop_length + 1
        if x.width >= width:
            start = random.randint(0, x.width - width) if self.training else 0
            return x[..., start : start + width]
        if self.pad_mode == AudioPadType.Repeat:
            return x.repeat(*([1] * (x.ndim - 1)), -(-width // x.width))[..., :width]
        missing = width - x.width
        before = 0
        if self.pad_mode == AudioPadType.Zeros:
            before = random.randint(0, missing) if self.training else missing // 2
        return F.pad(x, (before, missing - before))


class _Mask(SpectrogramTransform):
    """Base of the masks: train-only, after the normalizations, filling with `no_information_value` by default.

    `p` is the probability that an item is masked, drawn per item on the device (as for the `...GPU`
    signal augmentations), so every call goes through.
    """

    split_idx, order = 0, 100
    axis = 2

    def before_call(self, b, split_idx: int | None) -> None:
        super().before_call(b, split_idx)
        self.do = True

    def _masks(self, batch):
        raise NotImplementedError

    def encodes(self, x: AudioSpectrogram):
        batch, was_item = as_batch(x, 3)
        masks = self._masks(batch)
        if self.p < 1:
            masks = masks & random_mask([batch.shape[0], 1, 1, 1], self.p, device=batch.device)
        fill = self.mask_val if self.mask_val is not None else no_information_value(batch, x)
        return retype(torch.where(masks, fill, batch), x, was_item)


class MaskFreqGPU(_Mask):
    """SpecAugment frequency masking: `num_masks` bands of rows per item, widths uniform in `[min_size, max_size]`.

    Args:
        num_masks (int): bands per item (they may overlap).
        min_size, max_size (float): range of a band's width in rows.
        mask_val (float or None): the fill; `None` for the value that carries no information (module
            docstring: 0 after a normalization, else the clip's mean).
        p (float): probability that an item is masked.

    Example:
        >>> import torch
        >>> from specnorm.util import apply_transform
        >>> sg = AudioSpectrogram(torch.randn(4, 1, 64, 100), standardized=True)
        >>> inp, out = apply_transform(MaskFreqGPU(min_size=8, max_size=8), sg)
        >>> (out == 0).all(-1).sum(-1).flatten().tolist()     # 8 zeroed rows per item
        [8, 8, 8, 8]
    """

    def __init__(
        self,
        num_masks: int = 1,
        min_size: float = 1,
        max_size: float = 10,
        mask_val: float | None = None,
        p: float = 1.0,
    ):
        if not 0 <= min_size <= max_size:
            raise ValueError(f"need 0 <= min_size <= max_size, got {min_size}, {max_size}")
        super().__init__(p=p)
        self.num_masks, self.min_size, self.max_size, self.mask_val = num_masks, min_size, max_size, mask_val

    def _masks(self, batch):
        length = batch.shape[self.axis]
        if self.max_size > length:
            raise ValueError(
                f"{type(self).__name__}: max_size={self.max_size} is larger than axis {self.axis} of the "
                f"spectrogram batch of shape {tuple(batch.shape)}"
            )
        return functional.band_mask(batch, self.num_masks, self.min_size, self.max_size, self.axis)


class MaskTimeGPU(MaskFreqGPU):
    """SpecAugment time masking: `num_masks` bands of frames per item (arguments of `MaskFreqGPU`).

    Example:
        >>> import torch
        >>> from specnorm.util import apply_transform
        >>> sg = AudioSpectrogram(torch.randn(2, 1, 64, 100), standardized=True)
        >>> inp, out = apply_transform(MaskTimeGPU(min_size=5, max_size=5), sg)
        >>> (out == 0).all(-2).sum(-1).flatten().tolist()     # 5 zeroed frames per item
        [5, 5]
    """

    axis = 3


class MaskFreq(_Mask):
    """SpecAugment frequency masking with fixed-width bands: `num_masks` bands of `size` rows per item.

    Args:
        num_masks (int): bands per item.
        size (int): rows per band.
        start (int or None): first row of the first band (the others are random); `None`: random.
        val (float or None): the fill; `None` for the value that carries no information (module docstring).

    Example:
        >>> import torch
        >>> from specnorm.util import apply_transform
        >>> sg = AudioSpectrogram(torch.rand(1, 64, 50))
        >>> inp, out = apply_transform(MaskFreq(size=10, start=5, val=-1.), sg)
        >>> (out[0, :, 0] == -1).nonzero().flatten().tolist() == list(range(5, 15))
        True
    """

    def __init__(self, num_masks: int = 1, size: int = 20, start: int | None = None, val: float | None = None):
        super().__init__()
        self.num_masks, self.size, self.start, self.mask_val = num_masks, size, start, val

    def _masks(self, batch):
        length = batch.shape[self.axis]
        if self.size > length or (self.start is not None and not 0 <= self.start <= length - self.size):
            raise ValueError(
                f"{type(self).__name__}: a band of {self.size} starting at {self.start} does not fit axis "
                f"{self.axis} of the spectrogram batch of shape {tuple(batch.shape)}"
            )
        return functional.band_mask(batch, self.num_masks, self.size, self.size, self.axis, self.start)


class MaskTime(MaskFreq):
    "SpecAugment time masking with fixed-width bands of `size` frames (arguments of `MaskFreq`)."

    axis = 3


class SGRoll(SpectrogramTransform):
    """Roll each item's frames by a random amount up to `max_shift_pct` of the width, wrapping around.

    Args:
        max_shift_pct (float): largest roll as a fraction of the width.
        direction (int): -1 (earlier), 0 (either) or 1 (later).

    Example:
        >>> import torch
        >>> from specnorm.util import apply_transform
        >>> sg = AudioSpectrogram(torch.rand(1, 8, 100))
        >>> inp, out = apply_transform(SGRoll(), sg)
        >>> torch.equal(out.sort(-1).values, inp.sort(-1).values)   # the same frames, moved
        True
    """

    split_idx, order = 0, 100

    def __init__(self, max_shift_pct: float = 0.5, direction: int = 0):
        if direction not in (-1, 0, 1):
            raise ValueError(f"direction must be -1 (earlier), 0 (either) or 1 (later), not {direction!r}")
        super().__init__()
        self.max_shift_pct, self.direction = max_shift_pct, direction

    def encodes(self, x: AudioSpectrogram):
        batch, was_item = as_batch(x, 3)
        u = torch.rand(batch.shape[0], device=batch.device)
        u = 2 * u - 1 if self.direction == 0 else self.direction * u
        shifts = (u * self.max_shift_pct * x.width).long()
        return retype(shift_signal(batch, shifts, roll=True), x, was_item)


class DeltaGPU(SpectrogramTransform):
    """Append the first and second time derivatives as channels: `[C, F, T]` -> `[3C, F, T]`.

    The channels are the input's, then their deltas, then their deltas' deltas (torchaudio's
    `compute_deltas`, a regression over `width` frames, edges padded with `mode`).

    Args:
        width (int): frames in the regression window (odd, at least 3).
        mode (str): edge padding of `compute_deltas` (`'replicate'`).

    Example:
        >>> import torch
        >>> DeltaGPU()(AudioSpectrogram(torch.rand(2, 4, 64, 50))).shape
        torch.Size([2, 12, 64, 50])
    """

    def __init__(self, width: int = 9, mode: str = "replicate"):
        if width < 3 or width % 2 == 0:
            raise ValueError(f"width must be an odd number of frames >= 3, not {width}")
        super().__init__()
        self.width, self.mode = width, mode

    def encodes(self, x: AudioSpectrogram):
        batch, was_item = as_batch(x, 3)
        d1 = AF.compute_deltas(batch, win_length=self.width, mode=self.mode)
        d2 = AF.compute_deltas(d1, win_length=self.width, mode=self.mode)
        return retype(torch.cat([batch, d1, d2], dim=1), x, was_item)


class Delta(DeltaGPU):
    "`DeltaGPU` with fastaudio's item signature (`width`); the same computation, on items or batches."

    def __init__(self, width: int = 9):
        super().__init__(width=width)


class TfmResizeGPU(SpectrogramTransform):
    """Resize the spectrogram image to `size` (`(rows, frames)`, or an int for a square) by interpolation.

    Example:
        >>> import torch
        >>> TfmResizeGPU(32)(AudioSpectrogram(torch.rand(2, 1, 64, 50))).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(self, size: int | tuple[int, int], interp_mode: str = "bilinear"):
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.interp_mode = interp_mode

    def encodes(self, x: AudioSpectrogram):
        batch, was_item = as_batch(x, 3)
        corners = False if self.interp_mode in ("linear", "bilinear", "bicubic", "trilinear") else None
        out = F.interpolate(batch, size=self.size, mode=self.interp_mode, align_corners=corners)
        return retype(out, x, was_item)


class TfmResize(TfmResizeGPU):
    "`TfmResizeGPU` under fastaudio's item name; the same computation, on items or batches."
