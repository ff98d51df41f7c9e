"""Short-time normalization: `SlidingSpecNorm` (spectrograms) and `ShortTimeAudioNormalize` (waveforms).

`SlidingSpecNorm` is sliding-window cepstral mean (and optionally variance) normalization with the
window rules of Kaldi's `apply-cmvn-sliding` (`SlidingWindowCmn` in Kaldi's feat/feature-functions.cc),
for audio whose level or channel changes within a clip. For frame `t` of a clip of `T` frames and a
window of `W` frames:

- `center=True`: the window is the `W` frames `[t - W//2, t - W//2 + W)`. Near the start it is
  shifted right to begin at frame 0, near the end shifted left to finish at frame `T`, so every
  frame sees `min(W, T)` frames; a clip shorter than the window is normalized by its own statistics.
- `center=False`: the window is `[t - W, t + 1)`, the `W` frames before `t` and `t` itself (`W + 1`
  frames). While fewer frames precede `t` it is `[0, max(t + 1, min_window))`: at the start it looks
  ahead so that at least `min_window` frames count (Kaldi's `--min-cmn-window`, default 100); if that
  runs past the end of the clip, the window is shifted left to end there (the whole clip when shorter).
- `norm_vars=True` also divides by the window's standard deviation (population), floored at `eps`
  (Kaldi floors the variance at 1e-10, i.e. `eps=1e-5`); a one-frame window gives 0, as in Kaldi.

The window sums come from cumulative sums over time (no loop over frames), accumulated in float64
after subtracting each row's mean, so dB values do not cancel catastrophically.

`ShortTimeAudioNormalize` is the waveform counterpart: each sample is divided by the RMS of the
signal in a window of `window_s` seconds around it (same centred window rule), which evens out
the loudness within a clip, a short-time automatic gain control.
"""
import torch
import torch.nn.functional as F
from fastai.data.transforms import DisplayedTransform
from fastai.torch_core import TensorImageBase

from .audio import AudioTensor

__all__ = ["window_bounds", "sliding_norm", "SlidingSpecNorm", "short_time_rms", "ShortTimeAudioNormalize"]


def _accumulator_dtype(x):
    return torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64


def _raise_if_not_finite(stats, x, who):
    "NaN or Inf anywhere in a row makes its statistics non-finite: check those, count in `x` only to report."
    if not torch.isfinite(stats).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{who}: the input of shape {tuple(x.shape)} contains {bad} NaN or Inf values")


def window_bounds(n_frames, window, center=True, min_window=100, device=None):
    """`(start, end)` int64 tensors of length `n_frames`: frame `t` is normalized over `[start[t], end[t])`.

    The rules are Kaldi's `apply-cmvn-sliding` ones, stated in the module docstring.

    Example:
        >>> window_bounds(5, 3)
        (tensor([0, 0, 1, 2, 2]), tensor([3, 3, 4, 5, 5]))
    """
    if window < 1 or min_window < 1:
        raise ValueError(f"window and min_window must be at least 1 frame, not {window} and {min_window}")
    t = torch.arange(n_frames, device=device)
    if center:
        start = t - window // 2
        end = start + window
        end = end - start.clamp(max=0)           # shift right to start at frame 0
    else:
        start = t - window
        end = torch.clamp(t + 1, min=min_window)  # at the start: look ahead to min_window frames
    start = start.clamp(min=0)
    overflow = (end - n_frames).clamp(min=0)
    return (start - overflow).clamp(min=0), end - overflow   # shift left to end at the last frame


def _window_sums(z, start, end):
    "Sums of `z` over `[start[t], end[t])` along the last axis, from one float64 cumulative sum."
    cum = F.pad(z.cumsum(-1, dtype=_accumulator_dtype(z)), (1, 0))
    return cum[..., end] - cum[..., start]


def sliding_norm(x, window=300, center=True, norm_vars=False, min_window=100, eps=1e-5):
    """Sliding-window mean (and variance) normalization of `x` along its last axis (time).

    Every row (each frequency channel of each clip) is normalized on its own. See the module
    docstring for the window rules. Returns a plain tensor of `x`'s shape and dtype.
    """
    x = x.as_subclass(torch.Tensor)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"sliding_norm needs frames on the last axis, got shape {tuple(x.shape)}")
    start, end = window_bounds(x.shape[-1], window, center, min_window, device=x.device)
    count = (end - start).to(_accumulator_dtype(x))
    row_mean = x.mean(-1, keepdim=True)
    _raise_if_not_finite(row_mean, x, "sliding_norm")
    z = x - row_mean  # any per-row shift leaves the result unchanged; this one keeps the running sums small
    mean = _window_sums(z, start, end) / count
    out = z - mean.to(x.dtype)
    if norm_vars:
        var = (_window_sums(z * z, start, end) / count - mean * mean).clamp(min=0)
        out = torch.where(count > 1, out / var.sqrt().to(x.dtype).clamp(min=eps), 0)
    return out


class SlidingSpecNorm(DisplayedTransform):
    """Short-time mean (and variance) normalization over a sliding window of frames (Kaldi's `apply-cmvn-sliding`).

    Each frequency channel of each clip is normalized by the mean (and with `norm_vars` the
    standard deviation) of a window of frames around each frame; the edge rules are in the module
    docstring. Needs no training statistics. Acts on `AudioSpectrogram` (any `TensorImageBase`);
    plain tensors pass through unchanged (fastai type dispatch).

    Args:
        window (int): window length in frames (at 10 ms hop, 300 frames are 3 s).
        center (bool): window centred on the frame (True) or ending at it (False, causal).
        norm_vars (bool): also divide by the window's standard deviation.
        min_window (int): with `center=False`, the fewest frames used at the start of a clip.
        eps (float): floor on the standard deviation (input units).

    Shape:
        `[..., F, T]` -> same; the metadata is kept.

    Example:
        >>> import torch
        >>> spec = AudioSpectrogram(torch.randn(2, 1, 64, 500) - 40, sr=16000, hop_length=160)
        >>> out = SlidingSpecNorm(window=300)(spec)
        >>> type(out).__name__, out.shape
        ('AudioSpectrogram', torch.Size([2, 1, 64, 500]))
    """
    order = 60

    def __init__(self, window=300, center=True, norm_vars=False, min_window=100, eps=1e-5):
        if window < 1 or min_window < 1:
            raise ValueError(f"window and min_window must be at least 1 frame, not {window} and {min_window}")
        super().__init__()
        self.window, self.center, self.norm_vars, self.min_window, self.eps = window, center, norm_vars, min_window, eps

    def encodes(self, x: TensorImageBase):
        out = sliding_norm(x, self.window, self.center, self.norm_vars, self.min_window, self.eps)
        return type(x)(out, **x.__dict__)


def short_time_rms(x, window, hop=None):
    """RMS of `x` along its last axis in a centred window of `window` samples around each sample.

    Windows follow the `center=True` rule (shifted to stay inside the clip). With `hop`, the RMS is
    taken at samples `0, hop, 2 hop, ...` and at the last sample, and linearly interpolated between
    them. Returns a plain float tensor of `x`'s shape.
    """
    x = x.as_subclass(torch.Tensor)
    n = x.shape[-1]
    if not x.is_floating_point():
        x = x.float()
    n = x.shape[-1]
    at = torch.arange(n, device=x.device) if hop is None else torch.arange(0, n, hop, device=x.device)
    if hop is not None and (n - 1) % hop:
        at = torch.cat([at, at.new_tensor([n - 1])])
    start, end = window_bounds(n, window, center=True, device=x.device)
    start, end = start[at], end[at]
    rms = (_window_sums(x * x, start, end) / (end - start)).clamp(min=0).sqrt().to(x.dtype)
    if hop is not None and len(at) > 1:
        t = torch.arange(n, device=x.device)
        left = (t // hop).clamp(max=len(at) - 2)
        frac = ((t - at[left]) / (at[left + 1] - at[left])).to(x.dtype)
        rms = torch.lerp(rms[..., left], rms[..., left + 1], frac)
    return rms


class ShortTimeAudioNormalize(DisplayedTransform):
    """Divide a waveform by its short-time RMS: every `window_s`-second stretch comes out near unit RMS.

    The gain at each sample is `1 / max(rms, floor)`, where `rms` is the root mean square of that
    channel over a centred window of `window_s` seconds (shifted to stay inside the clip; the whole
    clip when it is shorter). With `hop_s`, the RMS is computed every `hop_s` seconds and linearly
    interpolated, for a smoother gain. Silence stays zeros, and the gain never exceeds `1 / floor`.
    Acts on `AudioTensor` items and batches; plain tensors pass through unchanged.

    Args:
        window_s (float): window length in seconds.
        hop_s (float or None): spacing of the RMS estimates in seconds; None: at every sample.
        floor (float): smallest RMS divided by (1e-4, i.e. -80 dBFS: the largest gain is 80 dB).

    Shape:
        `[C, T]` or `[B, C, T]` -> same; each channel is normalized on its own.

    Example:
        >>> import torch
        >>> t = torch.arange(16000) / 16000
        >>> a = AudioTensor(torch.sin(2 * torch.pi * 440 * t) * torch.where(t < 0.5, 0.01, 0.5), sr=16000)
        >>> out = ShortTimeAudioNormalize(window_s=0.1)(a)
        >>> [round(float(out[0, s].pow(2).mean().sqrt()), 2) for s in (slice(1000, 6000), slice(10000, 15000))]
        [1.0, 1.0]
    """
    order = 45  # on waveforms: after the item transforms, before AudioToSpec (50)

    def __init__(self, window_s, hop_s=None, floor=1e-4):
        if window_s <= 0 or (hop_s is not None and hop_s <= 0) or floor <= 0:
            raise ValueError(f"window_s, hop_s and floor must be positive, not {window_s}, {hop_s}, {floor}")
        super().__init__()
        self.window_s, self.hop_s, self.floor = window_s, hop_s, floor

    def encodes(self, x: AudioTensor):
        if x.shape[-1] == 0:
            raise ValueError(f"ShortTimeAudioNormalize: got an empty signal of shape {tuple(x.shape)}")
        window = max(1, round(self.window_s * x.sr))
        hop = None if self.hop_s is None else max(1, round(self.hop_s * x.sr))
        out = x.as_subclass(torch.Tensor) / short_time_rms(x, window, hop).clamp(min=self.floor)
        _raise_if_not_finite(out.sum(-1), x, "ShortTimeAudioNormalize")  # a NaN anywhere makes its row's sum NaN
        return type(x)(out, **x.__dict__)
