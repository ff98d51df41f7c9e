"""Per-channel energy normalization: `PCEN` (a batch transform) and `TrainablePCEN` (an `nn.Module`).

PCEN (Wang et al., 2017, "Trainable frontend for robust and far-field keyword spotting") replaces
the log of a linear (mel) spectrogram `E` by automatic gain control and root compression:

    M[t] = (1 - b) M[t-1] + b E[t]                         (per channel, along time)
    PCEN = (E / (eps + M)^gain + bias)^power - bias^power

The parameters, their defaults and the conventions follow `librosa.pcen` (librosa 0.11), which the
tests use as the reference: `b` comes from `time_constant` (seconds) through
`t = time_constant * sr / hop_length`, `b = (sqrt(1 + 4 t^2) - 1) / (2 t^2)`; the filter starts from
its steady state for a unit input (`M[-1] = 1`, scipy's `lfilter_zi`, not scaled by the first
frame); `max_size > 1` takes the reference `E` as a maximum over `max_size` neighbouring frequency
channels; `power=0` gives `log1p(E / (eps + M)^gain)` and `bias=0` gives `(E / (eps + M)^gain)^power`.

The recursion is vectorised over the batch, channels and time: on the CPU in chunks of `_CHUNK`
frames (each chunk's response is one matrix product with the filter's truncated impulse response,
and the state carried between chunks a second one), on other devices as a log-depth doubling scan
of elementwise operations, which `float32` matmul precision settings (TF32) cannot degrade.

`TrainablePCEN` learns `gain`, `bias`, `power` and the smoothing coefficient `b` per frequency
channel, log-parameterised as in Wang et al. (the smoothing coefficient is learned too, as in the
sPCEN of LEAF, Zeghidour et al., 2021).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from fastai.data.transforms import DisplayedTransform
from fastai.torch_core import TensorImageBase

__all__ = ["PCEN", "TrainablePCEN", "pcen", "pcen_smoothing_coef"]

_CHUNK = 32  # frames per chunk of the CPU recursion; 16-64 perform alike


def pcen_smoothing_coef(time_constant=0.4, sr=22050, hop_length=512):
    """librosa's smoothing coefficient `b` for a time constant in seconds.

    `b = (sqrt(1 + 4 t^2) - 1) / (2 t^2)` with `t = time_constant * sr / hop_length` frames (the
    positive root of `t^2 b^2 + b - 1 = 0`; librosa chose it to approximate the filter's half-power
    width). It is a little under `1 / t`.

    Example:
        >>> round(pcen_smoothing_coef(0.4, 22050, 512), 5)
        0.05639
    """
    if time_constant <= 0:
        raise ValueError(f"time_constant must be positive (seconds), not {time_constant}")
    t = time_constant * sr / hop_length
    return (math.sqrt(1 + 4 * t**2) - 1) / (2 * t**2)


def _smooth_chunked(x, b):
    "M[t] = (1 - b) M[t-1] + b x[t], M[-1] = 1, along the last axis: two matrix products."
    a, n = 1 - b, x.shape[-1]
    k = -(-n // _CHUNK)
    chunks = F.pad(x, (0, k * _CHUNK - n)).unflatten(-1, (k, _CHUNK))  # [..., F, K, L]
    j = torch.arange(_CHUNK, device=x.device)
    lag = j[:, None] - j[None, :]
    # Within a chunk, from a zero state: M[j] = sum_{i <= j} b a^(j - i) x[i].
    impulse = torch.where(lag >= 0, b[..., None] * a[..., None] ** lag.clamp(min=0), 0)  # [F, L, L]
    local = chunks @ impulse.transpose(-1, -2)
    # The state entering chunk c is the sum of the chunk ends before it, decayed, plus the initial state.
    decay = a**_CHUNK
    c = torch.arange(k, device=x.device)
    gap = c[:, None] - c[None, :] - 1
    carry_matrix = torch.where(gap >= 0, decay[..., None] ** gap.clamp(min=0), 0)  # [F, K, K]
    carry = (local[..., -1:].transpose(-1, -2) @ carry_matrix.transpose(-1, -2))[..., 0, :] + decay**c
    out = local + carry[..., None] * a[..., None] ** (j + 1)
    return out.flatten(-2)[..., :n]


def _smooth_scan(x, b):
    "The same recursion as a doubling scan: after the step of shift s, M[t] holds x[t - 2s + 1 .. t]."
    a, n = 1 - b, x.shape[-1]
    out, shift = b * x, 1
    while shift < n:
        out = out + a**shift * F.pad(out[..., :-shift], (shift, 0))
        shift *= 2
    return out + a ** torch.arange(1, n + 1, device=x.device)  # decay of the initial state M[-1] = 1


def _smooth(x, b):
    return (_smooth_chunked if x.device.type == "cpu" else _smooth_scan)(x, b)


def _per_channel(v, x):
    "A per-channel `[F]` tensor shaped `[F, 1]` to broadcast over `[..., F, T]`; a number stays a number."
    return v.to(x.dtype).reshape(-1, 1) if torch.is_tensor(v) else v


def pcen(x, sr=22050, hop_length=512, gain=0.98, bias=2.0, power=0.5, time_constant=0.4, eps=1e-6, b=None, max_size=1):
    """PCEN of a non-negative linear spectrogram `x` `[..., F, T]` (frequency, then time, last).

    Arguments are those of `librosa.pcen`; `gain`, `bias`, `power` and `b` may also be per-channel
    tensors of shape `[F]`. Returns a plain float tensor of `x`'s shape.
    """
    x = x.as_subclass(torch.Tensor)
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # the recursion and the powers need float32 range and precision
    if x.ndim < 2 or x.numel() == 0:
        raise ValueError(f"pcen expects a non-empty spectrogram [..., F, T], got shape {tuple(x.shape)}")
    low, high = torch.aminmax(x)
    if not ((low >= 0) & torch.isfinite(high)):  # NaN propagates through aminmax
        bad = int((~(torch.isfinite(x) & (x >= 0))).sum())
        raise ValueError(
            f"pcen needs a finite, non-negative (linear magnitude or power) spectrogram; the input "
            f"of shape {tuple(x.shape)} has {bad} negative, NaN or Inf values"
        )
    if not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"max_size must be a positive integer, not {max_size}")
    if b is None:
        b = pcen_smoothing_coef(time_constant, sr, hop_length)
    elif not torch.is_tensor(b) and not 0 <= b <= 1:
        raise ValueError(f"b must be between 0 and 1, not {b}")
    ref = x
    if max_size > 1:  # maximum over neighbouring channels, as scipy's maximum_filter1d places it
        before = max_size // 2
        ref = F.pad(x.transpose(-1, -2), (before, max_size - 1 - before), value=-math.inf)
        ref = ref.unfold(-1, max_size, 1).amax(-1).transpose(-1, -2)
    b = _per_channel(b, x) if torch.is_tensor(b) else torch.tensor([[b]], dtype=x.dtype, device=x.device)
    gain, bias, power = (_per_channel(v, x) for v in (gain, bias, power))
    agc = x * (eps + _smooth(ref, b)) ** -gain
    if not torch.is_tensor(power) and power == 0:
        return torch.log1p(agc)
    if not torch.is_tensor(bias) and bias == 0:
        return agc**power
    return bias**power * torch.expm1(power * torch.log1p(agc / bias))


class PCEN(DisplayedTransform):
    """Per-channel energy normalization of linear (mel) spectrograms, as `librosa.pcen`.

    Use it instead of the dB conversion: build the spectrogram with `AudioToSpec(mel=True,
    to_db=False)`. The sample rate and hop length come from the spectrogram's metadata (`sr`,
    `hop_length`) when it has them, else from the arguments. The output's metadata says
    `to_db=False, pcen=True`. Acts on `AudioSpectrogram` (any `TensorImageBase`); plain tensors
    pass through unchanged (fastai type dispatch). A dB spectrogram raises a `ValueError`.

    Args:
        sr, hop_length: used when the input has no such metadata.
        gain, bias, power, time_constant, eps, b, max_size: as in `librosa.pcen`.

    Shape:
        `[B, C, F, T]` or `[C, F, T]` -> same.

    Example:
        >>> import torch
        >>> spec = AudioSpectrogram(torch.rand(2, 1, 64, 100), sr=16000, hop_length=160, to_db=False)
        >>> out = PCEN()(spec)
        >>> type(out).__name__, out.shape, out.to_db, out.pcen
        ('AudioSpectrogram', torch.Size([2, 1, 64, 100]), False, True)
    """

    order = 55  # after AudioToSpec (50), before the spectrogram normalizations (60)

    def __init__(
        self, sr=22050, hop_length=512, gain=0.98, bias=2.0, power=0.5, time_constant=0.4, eps=1e-6, b=None, max_size=1
    ):
        for name, v in dict(gain=gain, bias=bias, power=power).items():
            if v < 0:
                raise ValueError(f"{name} must be non-negative, not {v}")
        if eps <= 0 or time_constant <= 0:
            raise ValueError(f"eps and time_constant must be positive, not {eps} and {time_constant}")
        if b is not None and not 0 <= b <= 1:
            raise ValueError(f"b must be between 0 and 1, not {b}")
        super().__init__()
        self.sr, self.hop_length, self.gain, self.bias, self.power = sr, hop_length, gain, bias, power
        self.time_constant, self.eps, self.b, self.max_size = time_constant, eps, b, max_size

    def encodes(self, x: TensorImageBase):
        if getattr(x, "to_db", False):
            raise ValueError(
                "PCEN needs a linear spectrogram, but this one is in dB (to_db=True): "
                "build it with AudioToSpec(..., to_db=False)"
            )
        sr = getattr(x, "sr", None) or self.sr
        hop_length = getattr(x, "hop_length", None) or self.hop_length
        out = pcen(
            x, sr, hop_length, self.gain, self.bias, self.power, self.time_constant, self.eps, self.b, self.max_size
        )
        return type(x)(out, **{**x.__dict__, "to_db": False, "pcen": True})


class TrainablePCEN(nn.Module):
    """PCEN with learnable per-channel `gain`, `bias`, `power` and smoothing coefficient (Wang et al., 2017).

    Each parameter is stored as its logarithm, one value per frequency channel (row `F` of the
    spectrogram), so it stays positive while training; the smoothing coefficient is clamped to at
    most 1. At initialisation it computes what `PCEN` (and `librosa.pcen`) computes with the same
    values, to float32 rounding. Put it first in the model, on linear (mel) spectrograms.

    Args:
        n_channels (int): number of frequency channels (mel bands) `F`.
        sr, hop_length, time_constant: give the initial smoothing coefficient, as in `PCEN`
            (or pass `b` directly).
        gain, bias, power, eps, b: initial values, as in `librosa.pcen` (`eps` is fixed).
        learn_smoothing (bool): learn the smoothing coefficient too.

    Shape:
        `[..., F, T]` (e.g. `[B, C, F, T]`) -> same, as a plain tensor.

    Example:
        >>> import torch
        >>> frontend = TrainablePCEN(64, sr=16000, hop_length=160)
        >>> y = frontend(torch.rand(8, 1, 64, 100))
        >>> y.shape, sum(p.numel() for p in frontend.parameters())
        (torch.Size([8, 1, 64, 100]), 256)
    """

    def __init__(
        self,
        n_channels,
        sr=22050,
        hop_length=512,
        gain=0.98,
        bias=2.0,
        power=0.5,
        time_constant=0.4,
        eps=1e-6,
        b=None,
        learn_smoothing=True,
    ):
        super().__init__()
        b = pcen_smoothing_coef(time_constant, sr, hop_length) if b is None else b
        for name, v in dict(gain=gain, bias=bias, power=power, b=b).items():
            if v <= 0:
                raise ValueError(f"{name} must be positive for a log parameterisation, not {v}")
        if b > 1:
            raise ValueError(f"b must be at most 1, not {b}")
        self.n_channels, self.eps = n_channels, eps
        init = lambda v: nn.Parameter(torch.full((n_channels,), math.log(v)))
        self.log_gain, self.log_bias, self.log_power = init(gain), init(bias), init(power)
        self.log_b = init(b).requires_grad_(learn_smoothing)

    def forward(self, x):
        if x.ndim < 2 or x.shape[-2] != self.n_channels:
            raise ValueError(
                f"TrainablePCEN({self.n_channels}) expects [..., {self.n_channels}, T], got shape {tuple(x.shape)}"
            )
        return pcen(
            x,
            gain=self.log_gain.exp(),
            bias=self.log_bias.exp(),
            power=self.log_power.exp(),
            b=self.log_b.exp().clamp(max=1),
            eps=self.eps,
        )

    def extra_repr(self):
        return f"n_channels={self.n_channels}, eps={self.eps}"
