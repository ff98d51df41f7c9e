"""Small helpers for tests and notebooks (fastaudio's `fastaudio.util`): test tones, applying a transform
the way a training DataLoader does, and `auto_batch`, which lets a batch function take single items.
"""

import math
from collections.abc import Callable
from functools import wraps

import torch
from fastai.vision.augment import RandTransform

from .audio import AudioTensor

__all__ = ["apply_transform", "auto_batch", "create_sin_wave", "test_audio_tensor"]


def create_sin_wave(seconds: float = 5, sr: int = 16000, freq: float = 400) -> tuple[torch.Tensor, int]:
    """A sine of `freq` Hz and unit amplitude, `seconds` long at `sr` Hz: `(samples [seconds * sr], sr)`.

    Example:
        >>> import torch
        >>> wave, sr = create_sin_wave(seconds=1, sr=8000, freq=1000)
        >>> wave.shape, sr, [round(v, 3) for v in wave[:3].tolist()]
        (torch.Size([8000]), 8000, [0.0, 0.707, 1.0])
    """
    t = torch.arange(round(seconds * sr), dtype=torch.float64) / sr
    return torch.sin(2 * math.pi * freq * t).float(), sr


def test_audio_tensor(seconds: float = 2, sr: int = 16000, channels: int = 1) -> AudioTensor:
    """An `AudioTensor` `[channels, seconds * sr]` of a 400 Hz sine (the same on every channel).

    Example:
        >>> import torch
        >>> a = test_audio_tensor(channels=2)
        >>> a.shape, a.sr, a.duration
        (torch.Size([2, 32000]), 16000, 2.0)
    """
    wave, sr = create_sin_wave(seconds=seconds, sr=sr)
    return AudioTensor(wave.repeat(channels, 1), sr=sr)


test_audio_tensor.__test__ = False  # a helper, not a test, wherever pytest finds it imported


def apply_transform(transform: Callable, inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply `transform` to a copy of `inp` as the training DataLoader would; returns `(copy of inp, output)`.

    Random transforms get `split_idx=0` (the training split, where augmentations apply); `inp` is left
    untouched even by a transform that works in place.

    Example:
        >>> import torch
        >>> from specnorm.augment_signal import ChangeVolume
        >>> inp, out = apply_transform(ChangeVolume(p=1., lower=2., upper=2.), test_audio_tensor())
        >>> torch.allclose(out, 2 * inp)
        True
    """
    x = inp.clone()
    out = transform(x, split_idx=0) if isinstance(transform, RandTransform) else transform(x)
    return inp.clone(), out


def auto_batch(item_dims: int) -> Callable[[Callable], Callable]:
    """Decorator for a method `f(self, x)` written for batches: an item of `item_dims` dims gets a batch axis
    added before the call and removed after.

    Example:
        >>> import torch
        >>> class Peak:
        ...     @auto_batch(2)
        ...     def __call__(self, x):    # x: [B, C, T]
        ...         return x.amax(-1, keepdim=True)
        >>> Peak()(torch.ones(1, 5)).shape, Peak()(torch.ones(3, 1, 5)).shape
        (torch.Size([1, 1]), torch.Size([3, 1, 1]))
    """

    def decorate(f):
        @wraps(f)
        def call(self, x, *args, **kwargs):
            if x.ndim != item_dims:
                return f(self, x, *args, **kwargs)
            return f(self, x[None], *args, **kwargs)[0]

        return call

    return decorate
