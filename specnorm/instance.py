"""Per-spectrogram normalization (`InstanceSpecNorm`): each clip standardised by its own statistics.

This is per-utterance cepstral mean and variance normalization (CMVN), long used in speech toolkits
(Kaldi's `apply-cmvn` with per-utterance stats, ESPnet's and SpeechBrain's utterance-level
normalization), and the spectrogram analogue of instance normalization (Ulyanov et al., 2016). It
needs no training statistics. Statistics are population moments (divide by the count), from
torch's `var_mean`, which does not cancel on large dB offsets (a constant, silent spectrogram gives
exact zeros), or from a two-pass masked sum; the standard deviation is floored at `eps`. With a
mask, only the valid positions of a padded batch count, and padded positions come out as zeros.
The math is `specnorm.functional.instance_norm`; NaN/Inf outputs are counted on the device and
reported by `check()` (see `specnorm.functional.FiniteCheck`); on CUDA batches without padding, the second
Triton kernel of `specnorm.kernel_affine` counts them as it writes them.
"""

from collections.abc import Sequence

import torch
from fastai.data.transforms import DisplayedTransform
from fastai.torch_core import TensorImageBase

from .functional import INSTANCE_EPS, FiniteCheck, check_axes, check_eps, instance_norm, lengths_to_mask, valid_mask

__all__ = ["InstanceSpecNorm", "instance_norm", "lengths_to_mask", "valid_mask"]


class InstanceSpecNorm(DisplayedTransform):
    """Normalize every spectrogram by its own mean and standard deviation (per-utterance CMVN).

    No statistics are learned, so it needs no `setup` and can stand before or instead of
    `SpecNormalize`. It acts on `AudioSpectrogram` (any `TensorImageBase`); plain tensors pass
    through unchanged (fastai type dispatch). A batch padded in time is handled when the
    spectrogram carries a `mask` attribute (bool, broadcastable, True on real values) or a
    `lengths` attribute (valid frames per item, after `pad_before` frames of padding; `AudioToSpec` sets
    both): padding does not count and comes out as zeros.
    It never reads a value on the host: batches with NaN or Inf outputs are counted on the device
    and `check()` (called by the `CheckFinite` callback) raises naming the first of them.

    Args:
        axes: axes of `[B, C, F, T]` the statistics run over, among `(1, 2, 3)`; see `instance_norm`.
            `(2, 3)`: per clip and channel; `(3,)`: per frequency channel over time.
        eps: floor on the standard deviation (input units, dB for dB spectrograms), > 0.

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

    def __init__(self, axes: Sequence[int] = (2, 3), eps: float = INSTANCE_EPS):
        super().__init__()
        self.axes, self.eps = check_axes(axes, 4, allowed=(1, 2, 3)), check_eps(eps, positive=True)
        self.finite = FiniteCheck(type(self).__name__)

    def check(self) -> None:
        "Raise if a batch since the last check gave NaN or Inf (reads device counts: one host sync)."
        self.finite.check()

    def encodes(self, x: TensorImageBase):
        mask = getattr(x, "mask", None)
        if mask is None:
            mask = valid_mask(x)  # from `lengths`/`pad_before`, None without them
        t = x.as_subclass(torch.Tensor)
        # the batch's NaN/Inf count: on CUDA, added by the normalize kernel as it writes (no extra pass)
        out = instance_norm(t, self.axes, mask=mask, eps=self.eps, count=self.finite.count_cell(t))
        return type(x)(out, **{**x.__dict__, "standardized": True})
