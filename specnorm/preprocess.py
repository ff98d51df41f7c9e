"""Preprocessing of single clips (fastaudio's `augment.preprocess` and `PreprocessAudio`): silence removal,
and reading a file through the item transforms of `AudioBlock`.

`RemoveSilence` finds the non-silent parts of a clip the way librosa's `effects.split` does: short-time
RMS in dB relative to the clip's loudest frame, silent below `-threshold` dB. It decides the clip's
length from its values, so it runs per file, on the CPU, before batching (item transforms or
preprocessing); it is not a batch transform.
"""

from enum import Enum

import torch
from fastai.data.transforms import DisplayedTransform
from fasttransform import Pipeline

from .audio import AudioTensor
from .signal import audio_item_tfms

__all__ = ["PreprocessAudio", "RemoveSilence", "RemoveType", "nonsilent_intervals"]


class RemoveType(str, Enum):
    """What `RemoveSilence` removes; each member equals its string.

    `Trim`: silence before the first and after the last sound. `All` (and `Split`, its fastaudio alias,
    whose pieces fastaudio also joined back into one clip): every silence longer than `2 * pad_ms`.
    """

    Trim = "trim"
    All = "all"
    Split = "split"


def nonsilent_intervals(x: torch.Tensor, threshold: float, hop: int) -> torch.Tensor:
    """Sample intervals `[start, end)` of `x` `[C, T]` whose RMS is within `threshold` dB of the loudest frame.

    Frames are `2 * hop` samples long and centred on multiples of `hop` (channels averaged); each frame
    above the threshold keeps the `hop` samples it is centred on. Returns a `[K, 2]` int64 tensor.

    Example:
        >>> import torch
        >>> x = torch.cat([torch.zeros(1000), torch.ones(2000), torch.zeros(1000)])[None]
        >>> nonsilent_intervals(x, 20, 100).tolist()
        [[950, 3050]]
    """
    n = x.shape[-1]
    power = x.double().pow(2).mean(0)
    padded = torch.nn.functional.pad(power[None, None], (hop, hop), mode="constant")[0, 0]
    csum = torch.cat([power.new_zeros(1), padded.cumsum(0)])
    centres = torch.arange(0, n, hop)
    # Frame at centre c covers [c - hop, c + hop) of the signal: [c, c + 2 hop) of `padded`.
    energy = (csum[centres + 2 * hop] - csum[centres]) / (2 * hop)
    db = 10 * torch.log10(energy.clamp(min=1e-20))
    loud = db > db.max() - threshold
    if not loud.any():
        return torch.empty(0, 2, dtype=torch.long)
    # Runs of loud frames -> sample intervals.
    edges = torch.diff(torch.cat([loud.new_zeros(1), loud, loud.new_zeros(1)]).int())
    starts, ends = (edges == 1).nonzero().flatten(), (edges == -1).nonzero().flatten()
    lo = (starts * hop - hop // 2).clamp(min=0)
    hi = (ends * hop - hop // 2).clamp(max=n)
    return torch.stack([lo, hi], 1)


class RemoveSilence(DisplayedTransform):
    """Remove the silence of a clip: its ends (`RemoveType.Trim`) or every long pause (`RemoveType.All`).

    Sound is where the short-time RMS is within `threshold` dB of the clip's loudest frame (frames of
    `2 * pad_ms`, hop `pad_ms`). Each sound keeps `pad_ms` of context on both sides; pauses shorter
    than `2 * pad_ms` stay. A clip with no silence, or shorter than `pad_ms`, is returned unchanged;
    a silent clip too (nothing in it is louder than the rest).

    Args:
        remove_type (RemoveType, str or None): `'trim'`, `'all'` or `'split'`; `None` does nothing.
        threshold (float): dB below the loudest frame that count as silence.
        pad_ms (float): context kept around each sound, and the analysis hop, in milliseconds.

    Shape:
        `[C, T]` -> `[C, T']`, `T' <= T`. Items only (the length depends on the clip).

    Example:
        >>> import torch
        >>> sr = 1000
        >>> x = torch.cat([torch.zeros(500), torch.randn(1000), torch.zeros(500)])
        >>> RemoveSilence(pad_ms=20)(AudioTensor(x, sr=sr)).nsamples   # 1 s of sound, +-10 ms (half a hop), + 2 x 20 ms
        1060
    """

    def __init__(
        self, remove_type: RemoveType | str | None = RemoveType.Trim, threshold: float = 20, pad_ms: float = 20
    ):
        super().__init__()
        if remove_type is not None and remove_type not in tuple(RemoveType):
            raise ValueError(f"remove_type must be one of {[t.value for t in RemoveType]} or None, not {remove_type!r}")
        self.remove_type = None if remove_type is None else RemoveType(remove_type)
        self.threshold, self.pad_ms = threshold, pad_ms

    def encodes(self, x: AudioTensor):
        if x.ndim != 2:
            raise ValueError(f"RemoveSilence works on one clip [C, T], not on shape {tuple(x.shape)}")
        pad = int(self.pad_ms / 1000 * x.sr)
        if self.remove_type is None or pad < 1 or pad > x.nsamples:
            return x
        spans = nonsilent_intervals(x.as_subclass(torch.Tensor).detach().cpu(), self.threshold, pad)
        if len(spans) == 0:
            return x
        spans = (spans + torch.tensor([-pad, pad])).clamp(0, x.nsamples).tolist()
        if self.remove_type == RemoveType.Trim:
            return x[..., spans[0][0] : spans[-1][1]]
        merged = [spans[0]]
        for lo, hi in spans[1:]:  # the padded spans of sounds closer than 2 * pad overlap: join them
            if lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        return torch.cat([x[..., lo:hi] for lo, hi in merged], dim=-1)


class PreprocessAudio:
    """Read a file and apply the item transforms of `AudioBlock` to it: a function, not a `Transform`.

    Args:
        sample_rate, force_mono, crop_signal_to: as `audio_item_tfms` (crop in milliseconds).

    Example:
        >>> import torch
        >>> pp = PreprocessAudio(sample_rate=8000, crop_signal_to=1000)
        >>> pp('dog.wav').shape    # doctest: +SKIP
        torch.Size([1, 8000])
    """

    def __init__(self, sample_rate: int | None = 16000, force_mono: bool = True, crop_signal_to: float | None = None):
        self.tfms = Pipeline(audio_item_tfms(sample_rate, force_mono, crop_signal_to))

    def __call__(self, fn):
        return self.tfms(AudioTensor.create(fn))
