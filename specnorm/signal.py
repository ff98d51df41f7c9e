"""Waveform item transforms: `Resample`, `DownmixMono`, `ResizeSignal`, and `audio_item_tfms`
(the list of them that `AudioBlock` and `AudioCache` apply), over the pure torch function `resample`.

Resampling is torchaudio's band-limited windowed-sinc interpolation (Hann window, `lowpass_filter_width=6`,
`rolloff=0.99`, the defaults of `torchaudio.functional.resample`). Its polyphase kernel has one row per
output phase of the reduced rate ratio, so it is built once per (source rate, target rate, device) and
reused for every clip while it is small (44.1 -> 16 kHz: 160 phases); on the CPU it is applied as matrix
products over each phase's non-zero taps when that skips most of them (`_BandedResampler`). For ratios
with many phases (16000 -> 17001 Hz: 17001 phases, gigabytes) `resample` evaluates the same windowed sinc
at each output sample's fractional input position instead, in chunks of bounded memory: same filter,
same result.
Cropping and padding follow fastaudio's `ResizeSignal`, with the duration in milliseconds.
"""

import math
import random
from functools import lru_cache

import torch
import torch.nn.functional as F
import torchaudio.transforms as T
from fastai.data.transforms import DisplayedTransform
from fastai.vision.augment import RandTransform

from .audio import AudioTensor

__all__ = ["DownmixMono", "Resample", "ResizeSignal", "audio_item_tfms", "resample"]

LOWPASS_FILTER_WIDTH, ROLLOFF = 6, 0.99  # torchaudio's defaults: one home for the filter settings
# Above this many kernel elements (4 MB in float32) the polyphase kernel gives way to direct evaluation.
MAX_POLYPHASE_ELEMENTS = 1 << 20
# Elements of the [rows, outputs, taps] gather the direct path holds at once (16 MB in float32; a chunk
# peaks at about five such arrays).
DIRECT_CHUNK_ELEMENTS = 1 << 22
# Output phases per matrix product of `_BandedResampler` (44.1 -> 16 kHz on x86: 16 measured fastest,
# 12 and 24 a fifth slower).
BAND_PHASES = 16


class _DirectResampler:
    """Windowed-sinc resampling evaluated per output sample (no polyphase table).

    Output sample `j` sits at input position `j * orig / new`; it is the sum over the input samples `k`
    within `width` of it of `x[k] * h((k - j * orig / new) / orig)`, where `h` is torchaudio's Hann-windowed
    sinc at cutoff `min(orig, new) * rolloff`. Integer arithmetic gives each output's integer and fractional
    position exactly; the taps are computed per chunk of outputs.
    """

    def __init__(self, orig, new, device):
        self.orig, self.new, self.device = orig, new, device
        self.base = min(orig, new) * ROLLOFF
        self.width = math.ceil(LOWPASS_FILTER_WIDTH * orig / self.base)
        self.taps = torch.arange(-self.width, self.width + 1, device=device)

    def _weights(self, j):
        "Taps `[len(j), 2 * width + 1]` for the outputs `j` (int64), and the input index each output sits at."
        q, r = torch.div(j * self.orig, self.new, rounding_mode="floor"), (j * self.orig) % self.new
        # The fraction r / new is exact in float64; in [0, 1) float32 keeps it to 6e-8, ample for the taps.
        frac = (r.double() / self.new).float()
        t = (self.taps[None] - frac[:, None]) * (self.base / self.orig)
        t = t.clamp(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
        window = torch.cos(t * (math.pi / LOWPASS_FILTER_WIDTH / 2)) ** 2
        t = t * math.pi
        sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)
        return sinc * window * (self.base / self.orig), q

    def __call__(self, x):
        shape, length = x.shape, x.shape[-1]
        x = x.reshape(-1, length)
        n_out = math.ceil(self.new * length / self.orig)
        # zero padding on both sides so every tap indexes inside the tensor
        xp = F.pad(x, (self.width, self.width + 1))
        out = x.new_empty(x.shape[0], n_out)
        chunk = max(1, DIRECT_CHUNK_ELEMENTS // (x.shape[0] * self.taps.numel()))
        for start in range(0, n_out, chunk):
            j = torch.arange(start, min(start + chunk, n_out), device=x.device)
            w, first = self._weights(j)
            idx = first[:, None] + self.width + self.taps[None]  # into the padded signal
            out[:, start : start + len(j)] = (xp[:, idx] * w.to(x.dtype)).sum(-1)
        return out.reshape(*shape[:-1], n_out)


class _BandedResampler:
    """torchaudio's polyphase resampling as matrix products over the kernel's non-zero band (CPU).

    torchaudio convolves frames of `2 * width + orig` samples, one every `orig` samples, with one kernel
    row per output phase; but a phase's windowed sinc is exactly zero outside about `2 * width` of those
    taps (44.1 -> 16 kHz: 34 of 475). Here the phases go in groups of `BAND_PHASES`, and each group
    multiplies only the columns where one of its rows is non-zero, the frames being a strided view of
    the zero-padded signal (no copy). Same products, fewer zeros, summed in another order: equal to
    torchaudio's result to float32 rounding; 44.1 -> 16 kHz measured 2.4x faster than its `conv1d`.
    """

    def __init__(self, kernel, width, orig, new):
        k = kernel[:, 0].cpu()  # [new, 2 * width + orig]
        cols = torch.arange(k.shape[1])
        first = torch.where(k != 0, cols, k.shape[1]).amin(1).tolist()
        last = torch.where(k != 0, cols, -1).amax(1).tolist()
        self.groups = []
        for g in range(0, new, BAND_PHASES):
            lo, hi = min(first[g : g + BAND_PHASES]), max(last[g : g + BAND_PHASES]) + 1
            self.groups.append((lo, k[g : g + BAND_PHASES, lo:hi].T.contiguous()))
        self.width, self.orig, self.new, self.span = width, orig, new, k.shape[1]

    @property
    def useful(self):
        "Whether it beats the convolution: a band at most a frame step wide (a strided view), half the taps."
        widths = [w.shape[0] for _, w in self.groups]
        taps = sum(w.numel() for _, w in self.groups)
        return max(widths) <= self.orig and 2 * taps <= self.new * self.span

    def __call__(self, x):
        shape, length = x.shape, x.shape[-1]
        x = x.reshape(-1, length)
        n, step = x.shape[0], self.orig
        per_row = -(-(length + self.span) // step)  # frame starts per signal; its padded length / step
        # one extra row of zeros keeps the last frames' views inside the buffer
        padded = x.new_zeros(n + 1, per_row * step)
        padded[:n, self.width : self.width + length] = x
        flat = padded.view(-1)
        out = torch.cat(
            [flat.as_strided((n * per_row, w.shape[0]), (step, 1), lo) @ w.to(x.dtype) for lo, w in self.groups], 1
        )
        n_out = math.ceil(self.new * length / self.orig)
        return out.view(n, per_row * self.new)[:, :n_out].reshape(*shape[:-1], n_out)


@lru_cache(maxsize=32)
def _resampler(orig_sr, new_sr, device):
    """The resampler of one rate pair on one device: torchaudio's polyphase kernel where it is small
    (on the CPU as products over its non-zero band when that is faster), direct evaluation otherwise."""
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    width = math.ceil(LOWPASS_FILTER_WIDTH * orig / (min(orig, new) * ROLLOFF))
    if new * (2 * width + orig) > MAX_POLYPHASE_ELEMENTS:
        return _DirectResampler(orig, new, device)
    polyphase = T.Resample(orig_sr, new_sr, lowpass_filter_width=LOWPASS_FILTER_WIDTH, rolloff=ROLLOFF)
    if device.type == "cpu":
        banded = _BandedResampler(polyphase.kernel, polyphase.width, orig, new)
        if banded.useful:
            return banded
    return _FullPrecision(polyphase.to(device)) if device.type == "cuda" else polyphase.to(device)


class _FullPrecision:
    """A module run with cuDNN's TF32 convolutions off. torch allows them by default on Ampere and later GPUs:
    a 10-bit mantissa for the products put errors of 1e-3 into resampled audio (measured on an H200: 4e-4 against
    the CPU's result), where float32 gives 1e-7; the resampling convolution is a small part of a batch's time."""

    def __init__(self, module):
        self.module = module

    def __call__(self, x):
        saved = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            return self.module(x)
        finally:
            torch.backends.cudnn.allow_tf32 = saved


def resample(x: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample the last axis of `x` from `orig_sr` to `new_sr` Hz (any integer rates), on `x`'s device.

    Args:
        x (Tensor): float waveform(s) `[..., T]`, e.g. a batch `[B, C, T]`.
        orig_sr, new_sr (int): sample rates in Hz.

    Shape:
        `[..., T]` -> `[..., ceil(T * new_sr / orig_sr)]`, as `torchaudio.functional.resample`.

    Example:
        >>> import torch
        >>> resample(torch.randn(2, 1, 16000), 16000, 17001).shape
        torch.Size([2, 1, 17001])
    """
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, not {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return x
    return _resampler(orig_sr, new_sr, x.device)(x)


class Resample(DisplayedTransform):
    """Resample to `sr` Hz (alias `sr_new`, fastaudio's name); audio already at `sr` passes through unchanged.

    Works on items `[C, T]` and on batches `[B, C, T]` (one rate per batch), on their device.

    Args:
        sr (int): target sample rate.

    Shape:
        `[..., T]` -> `[..., ceil(T * sr / x.sr)]`.

    Example:
        >>> import torch
        >>> Resample(16000)(AudioTensor(torch.randn(1, 44100), sr=44100)).shape
        torch.Size([1, 16000])
        >>> Resample(sr_new=8000).sr
        8000
    """

    order = 11

    def __init__(self, sr: int | None = None, sr_new: int | None = None):
        super().__init__()
        if (sr is None) == (sr_new is None):
            raise ValueError(f"give the target rate once, as `sr` or `sr_new` (got sr={sr}, sr_new={sr_new})")
        self.sr = int(sr if sr is not None else sr_new)

    def encodes(self, x: AudioTensor):
        if x.sr == self.sr:
            return x
        y = AudioTensor(resample(x.as_subclass(torch.Tensor), x.sr, self.sr), sr=self.sr)
        lengths = getattr(x, "lengths", None)
        if lengths is not None:  # valid samples scale as the signal does: ceil(length * sr / x.sr)
            y.lengths = (lengths * self.sr + x.sr - 1) // x.sr
        pad_before = getattr(x, "pad_before", None)
        if pad_before is not None:  # the first valid sample, at the new rate
            y.pad_before = (pad_before * self.sr + x.sr - 1) // x.sr
        return y


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

    The output carries `lengths` (int): its samples that are signal, not zero padding, and `pad_before`
    (int): the zeros before them (`AudioDL` collates both into the batch's `lengths`/`pad_before` tensors).

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

    def __init__(self, duration: float, pad_mode: str = "zeros"):
        if pad_mode not in self.pad_modes:
            raise ValueError(f"pad_mode must be one of {self.pad_modes}, not {pad_mode!r}")
        if duration <= 0:
            raise ValueError(f"duration must be positive (milliseconds), not {duration}")
        super().__init__()
        self.duration, self.pad_mode, self.training = duration, pad_mode, False

    def before_call(self, b, split_idx: int | None) -> None:
        super().before_call(b, split_idx)
        self.training = split_idx == 0

    def encodes(self, x: AudioTensor):
        n, length = round(self.duration * x.sr / 1000), x.nsamples
        if length == 0:
            raise ValueError(f"ResizeSignal: got an empty signal of shape {tuple(x.shape)}")
        if length >= n:
            start = random.randint(0, length - n) if self.training else 0
            return self._with_length(x[..., start : start + n], n, 0)
        missing = n - length
        if self.pad_mode == "repeat":
            return self._with_length(x.repeat(*([1] * (x.ndim - 1)), -(-n // length))[..., :n], n, 0)
        before = (
            0 if self.pad_mode == "zeros_after" else (random.randint(0, missing) if self.training else missing // 2)
        )
        return self._with_length(F.pad(x, (before, missing - before)), length, before)

    @staticmethod
    def _with_length(x, valid, before):
        x.lengths, x.pad_before = valid, before
        return x


def audio_item_tfms(
    sample_rate: int | None = 16000, force_mono: bool = True, crop_signal_to: float | None = None
) -> list[DisplayedTransform]:
    "The item transforms of `AudioBlock`: resample, downmix to mono, crop/pad to `crop_signal_to` ms."
    tfms = [] if sample_rate is None else [Resample(sample_rate)]
    if force_mono:
        tfms.append(DownmixMono())
    if crop_signal_to is not None:
        tfms.append(ResizeSignal(crop_signal_to))
    return tfms
