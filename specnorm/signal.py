"""Waveform item transforms: `Resample`, `DownmixMono`, `ResizeSignal`, and `audio_item_tfms`
(the list of them that `AudioBlock` and `AudioCache` apply).

Resampling is torchaudio's band-limited windowed-sinc interpolation (Hann window, the default of
`torchaudio.functional.resample`); its kernel depends only on the rate pair, so it is built once
per (source rate, target rate, device) and reused for every clip. Cropping and padding follow
fastaudio's `ResizeSignal`, with the duration in milliseconds.
"""

import random
from functools import lru_cache

import torch
import torch.nn.functional as F
import torchaudio.transforms as T
from fastai.data.transforms import DisplayedTransform
from fastai.vision.augment import RandTransform

from .audio import AudioTensor

__all__ = ["DownmixMono", "Resample", "ResizeSignal", "audio_item_tfms"]


@lru_cache(maxsize=32)
def _resampler(orig_sr, new_sr, device):
    return T.Resample(orig_sr, new_sr).to(device)


class Resample(DisplayedTransform):
    """Resample to `sr` Hz; audio already at `sr` passes through unchanged.

    Args:
        sr (int): target sample rate.

    Shape:
        `[..., T]` -> `[..., ceil(T * sr / x.sr)]`.

    Example:
        >>> import torch
        >>> Resample(16000)(AudioTensor(torch.randn(1, 44100), sr=44100)).shape
        torch.Size([1, 16000])
    """

    order = 11

    def __init__(self, sr):
        super().__init__()
        self.sr = int(sr)

    def encodes(self, x: AudioTensor):
        if x.sr == self.sr:
            return x
        y = _resampler(int(x.sr), self.sr, x.device)(x.as_subclass(torch.Tensor))
        return AudioTensor(y, sr=self.sr)


class DownmixMono(DisplayedTransform):
    """Average the channels into one: `[C, T]` -> `[1, T]` (batches: `[B, C, T]` -> `[B, 1, T]`).

    Example:
        >>> import torch
        >>> DownmixMono()(AudioTensor(torch.stack([torch.ones(4), -torch.ones(4)]), sr=8000))
        AudioTensor([[0., 0., 0., 0.]])
    """

    order = 10

    def encodes(self, x: AudioTensor):
        return x if x.nchannels == 1 else x.mean(-2, keepdim=True)


class ResizeSignal(RandTransform):
    """Crop or pad every signal to `duration` milliseconds.

    Longer signals are cropped at a random start on the training split and from the start
    elsewhere (validation, or a direct call). Shorter ones are padded according to `pad_mode`:
    `'zeros'` (silence split before and after: at random on the training split, evenly elsewhere),
    `'zeros_after'` (silence at the end) or `'repeat'` (the signal repeated).

    Args:
        duration (float): target length in milliseconds.
        pad_mode (str): `'zeros'`, `'zeros_after'` or `'repeat'`.

    Shape:
        `[..., T]` -> `[..., round(duration * sr / 1000)]`.

    Example:
        >>> import torch
        >>> ResizeSignal(500)(AudioTensor(torch.randn(1, 16000), sr=16000)).shape
        torch.Size([1, 8000])
    """

    split_idx, order = None, 12
    pad_modes = ("zeros", "zeros_after", "repeat")

    def __init__(self, duration, pad_mode="zeros"):
        if pad_mode not in self.pad_modes:
            raise ValueError(f"pad_mode must be one of {self.pad_modes}, not {pad_mode!r}")
        if duration <= 0:
            raise ValueError(f"duration must be positive (milliseconds), not {duration}")
        super().__init__()
        self.duration, self.pad_mode, self.training = duration, pad_mode, False

    def before_call(self, b, split_idx):
        super().before_call(b, split_idx)
        self.training = split_idx == 0

    def encodes(self, x: AudioTensor):
        n, length = round(self.duration * x.sr / 1000), x.nsamples
        if length == 0:
            raise ValueError(f"ResizeSignal: got an empty signal of shape {tuple(x.shape)}")
        if length > n:
            start = random.randint(0, length - n) if self.training else 0
            return x[..., start : start + n]
        missing = n - length
        if missing == 0:
            return x
        if self.pad_mode == "repeat":
            return x.repeat(*([1] * (x.ndim - 1)), -(-n // length))[..., :n]
        before = (
            0 if self.pad_mode == "zeros_after" else (random.randint(0, missing) if self.training else missing // 2)
        )
        return F.pad(x, (before, missing - before))


def audio_item_tfms(sample_rate=16000, force_mono=True, crop_signal_to=None):
    "The item transforms of `AudioBlock`: resample, downmix to mono, crop/pad to `crop_signal_to` ms."
    tfms = [] if sample_rate is None else [Resample(sample_rate)]
    if force_mono:
        tfms.append(DownmixMono())
    if crop_signal_to is not None:
        tfms.append(ResizeSignal(crop_signal_to))
    return tfms
