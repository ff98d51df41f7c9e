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
of elementwise operations, which `float32` matmul precision settings (TF32) cannot degrade. On CUDA,
without gradients and with `max_size=1`, one Triton kernel computes the whole of PCEN instead, one read
and one write of the batch (`specnorm.kernel_pcen`; `SPECNORM_TRITON=0` turns it off: `specnorm.kernels`).

`TrainablePCEN` learns `gain`, `bias`, `power` and the smoothing coefficient `b` per frequency
channel, log-parameterised as in Wang et al. (the smoothing coefficient is learned too, as in the
sPCEN of LEAF, Zeghidour et al., 2021).

The math is `specnorm.functional.pcen`. `PCEN` checks its input and output on the device: a batch with
negative, NaN or Inf inputs, or NaN/Inf outputs, is counted, and `check()` raises naming the first one.
"""

import math

import torch
import torch.nn as nn
from fastai.data.transforms import DisplayedTransform
from fastai.torch_core import TensorImageBase

from .functional import PCEN_DEFAULTS, FiniteCheck, check_eps, pcen, pcen_smoothing_coef

__all__ = ["PCEN", "TrainablePCEN", "pcen", "pcen_smoothing_coef"]

_D = PCEN_DEFAULTS


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
        self,
        sr: float = _D["sr"],
        hop_length: int = _D["hop_length"],
        gain: float = _D["gain"],
        bias: float = _D["bias"],
        power: float = _D["power"],
        time_constant: float = _D["time_constant"],
        eps: float = _D["eps"],
        b: float | None = None,
        max_size: int = 1,
    ):
        for name, v in dict(gain=gain, bias=bias, power=power).items():
            check_eps(v, name)
        check_eps(eps, "eps", positive=True), check_eps(time_constant, "time_constant", positive=True)
        if b is not None and not 0 <= b <= 1:
            raise ValueError(f"b must be between 0 and 1, not {b}")
        super().__init__()
        self.sr, self.hop_length, self.gain, self.bias, self.power = sr, hop_length, gain, bias, power
        self.time_constant, self.eps, self.b, self.max_size = time_constant, eps, b, max_size
        self.finite = FiniteCheck(type(self).__name__, "negative, NaN or Inf inputs, or NaN or Inf outputs")

    def check(self) -> None:
        "Raise if a batch since the last check was bad (reads device counts: one host sync)."
        self.finite.check()

    def encodes(self, x: TensorImageBase):
        if getattr(x, "to_db", False):
            raise ValueError(
                "PCEN needs a linear spectrogram, but this one is in dB (to_db=True): "
                "build it with AudioToSpec(..., to_db=False)"
            )
        sr = getattr(x, "sr", None) or self.sr
        hop_length = getattr(x, "hop_length", None) or self.hop_length
        t = x.as_subclass(torch.Tensor)
        # negative inputs and NaN/Inf outputs counted into the batch's mark: by the kernel as it writes, on CUDA
        count = self.finite.count_cell(t)
        out = pcen(
            t,
            sr,
            hop_length,
            self.gain,
            self.bias,
            self.power,
            self.time_constant,
            self.eps,
            self.b,
            self.max_size,
            count,
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
        n_channels: int,
        sr: float = _D["sr"],
        hop_length: int = _D["hop_length"],
        gain: float = _D["gain"],
        bias: float = _D["bias"],
        power: float = _D["power"],
        time_constant: float = _D["time_constant"],
        eps: float = _D["eps"],
        b: float | None = None,
        learn_smoothing: bool = True,
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
