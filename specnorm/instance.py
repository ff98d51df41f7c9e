"""Per-spectrogram normalization (`InstanceSpecNorm`): each clip standardised by its own statistics.

This is per-utterance cepstral mean and variance normalization (CMVN), long used in speech toolkits
(Kaldi's `apply-cmvn` with per-utterance stats, ESPnet's and SpeechBrain's utterance-level
normalization), and the spectrogram analogue of instance normalization (Ulyanov et al., 2016). It
needs no training statistics. Statistics are population moments (divide by the count), from
torch's `var_mean`, which does not cancel on large dB offsets (a constant, silent spectrogram gives
exact zeros), or from a two-pass masked sum; the standard deviation is floored at `eps`. With a
mask, only the valid positions of a padded batch count, and padded positions come out as zeros.
"""

import torch
from fastai.data.transforms import DisplayedTransform
from fastai.torch_core import TensorImageBase

__all__ = ["InstanceSpecNorm", "instance_norm", "lengths_to_mask"]


def _accumulator_dtype(x):
    return torch.float32 if x.device.type == "mps" else torch.float64  # MPS has no float64


def _raise_if_not_finite(stats, x, who):
    "NaN or Inf anywhere in a group makes its statistics non-finite: check those, count in `x` only to report."
    if not torch.isfinite(stats).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{who}: the input of shape {tuple(x.shape)} contains {bad} NaN or Inf values")


def lengths_to_mask(lengths, n_frames):
    """A `[B, 1, 1, n_frames]` bool mask, True on the first `lengths[i]` frames of item `i`.

    Example:
        >>> lengths_to_mask([2, 3], 4)[:, 0, 0]
        tensor([[ True,  True, False, False],
                [ True,  True,  True, False]])
    """
    lengths = torch.as_tensor(lengths).as_subclass(torch.Tensor).reshape(-1, 1, 1, 1)
    return torch.arange(n_frames, device=lengths.device) < lengths


def instance_norm(x, axes=(2, 3), mask=None, eps=1e-5):
    """Standardise each spectrogram of `x` over `axes`: `(x - mean) / max(std, eps)`.

    Args:
        x: `[B, C, F, T]` batch, or a `[C, F, T]` item (treated as a batch of one).
        axes: the axes of the batch layout `[B, C, F, T]` the statistics run over: `(2, 3)` per
            channel of each clip (the default), `(1, 2, 3)` per clip, `(3,)` per frequency channel
            over time (per-utterance CMVN). The batch axis 0 is not allowed (that is `SpecNormalize`).
        mask: optional bool tensor broadcastable to the batch, True where values are real (e.g.
            `lengths_to_mask(lengths, T)` for a batch padded in time); masked positions give zeros.
        eps: floor on the standard deviation, in the input's units.

    Returns a plain tensor of `x`'s shape and dtype.
    """
    x = x.as_subclass(torch.Tensor)
    item = x.ndim == 3
    if item:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"instance_norm expects [B, C, F, T] or [C, F, T], got shape {tuple(x.shape)}")
    dims = tuple(sorted({int(a) % 4 for a in axes}))
    if not dims or 0 in dims:
        raise ValueError(f"axes must be a non-empty subset of (1, 2, 3) (batch layout [B, C, F, T]), not {axes}")
    if mask is None:
        var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
    else:
        mask = torch.as_tensor(mask, device=x.device).as_subclass(torch.Tensor).bool()
        if item and mask.ndim == 3:
            mask = mask[None]
        try:
            mask = mask.expand_as(x)
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the batch {tuple(x.shape)}"
            ) from None
        count = mask.sum(dims, keepdim=True).clamp(min=1)  # a fully masked clip gives zeros, not NaN
        # A float64 sum makes the mean of a constant exactly that constant: silence stays exact zeros.
        total = torch.where(mask, x, 0).sum(dims, keepdim=True, dtype=_accumulator_dtype(x))
        mean = (total / count).to(x.dtype)
        var = torch.where(mask, (x - mean) ** 2, 0).sum(dims, keepdim=True) / count
    _raise_if_not_finite(mean + var, torch.where(mask, x, 0) if mask is not None else x, "instance_norm")
    out = (x - mean) / var.sqrt().clamp(min=eps)
    if mask is not None:
        out = torch.where(mask, out, 0)
    return out[0] if item else out


class InstanceSpecNorm(DisplayedTransform):
    """Normalize every spectrogram by its own mean and standard deviation (per-utterance CMVN).

    No statistics are learned, so it needs no `setup` and can stand before or instead of
    `SpecNormalize`. It acts on `AudioSpectrogram` (any `TensorImageBase`); plain tensors pass
    through unchanged (fastai type dispatch). A batch padded in time is handled when the
    spectrogram carries a `mask` attribute (bool, broadcastable, True on real values) or a
    `lengths` attribute (valid frames per item): padding does not count and comes out as zeros.

    Args:
        axes: axes of `[B, C, F, T]` the statistics run over; see `instance_norm`.
            `(2, 3)`: per clip and channel; `(3,)`: per frequency channel over time.
        eps: floor on the standard deviation (input units, dB for dB spectrograms).

    Shape:
        `[B, C, F, T]` or `[C, F, T]` -> same; the metadata (`sr`, `hop_length`, ...) is kept.

    Example:
        >>> import torch
        >>> spec = AudioSpectrogram(torch.randn(2, 1, 64, 100) * 20 - 50, sr=16000, hop_length=160)
        >>> out = InstanceSpecNorm()(spec)
        >>> type(out).__name__, bool(out[0].mean().abs() < 1e-5), round(out[0].std(correction=0).item(), 4)
        ('AudioSpectrogram', True, 1.0)
    """

    order = 60

    def __init__(self, axes=(2, 3), eps=1e-5):
        super().__init__()
        self.axes, self.eps = tuple(axes), eps

    def encodes(self, x: TensorImageBase):
        mask = getattr(x, "mask", None)
        if mask is None and getattr(x, "lengths", None) is not None:
            mask = lengths_to_mask(x.lengths, x.shape[-1]).to(x.device)
            if x.ndim == 3:
                mask = mask[0]
        out = instance_norm(x, self.axes, mask=mask, eps=self.eps)
        return type(x)(out, **{**x.__dict__, "standardized": True})
