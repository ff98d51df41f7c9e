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

How the window sums are computed, with no loop over frames: each row is first shifted by its mean
(the result does not change; dB values become small deviations). Consecutive windows differ by at
most one frame at each edge, so each window's sum is the previous one plus the frame that enters
minus the frame that leaves; the first window is summed directly and one cumulative sum over the
windows adds up these steps. Only the distinct windows are computed (`T - W + 1` when centred), and
the frames that share a shifted edge window take its statistics by broadcasting. The running sums
hold at most a window's worth of frames, never a prefix of the whole clip. On CPU, rows go in blocks
of about 4 MiB of scratch, through buffers allocated once per call (fresh memory costs page faults).

Accuracy, against a float64 two-pass computation on float32 input: the mean path keeps its sums in
float32 on CPU (torch accumulates a float32 cumulative sum in float64 and rounds each window once),
and is within about one float32 ulp of the values (measured up to 1e-5 on dB spectrograms, 1e5-frame
clips included); with `norm_vars` the sums of values and squares are float64 (float32 on MPS), since
`E[z^2] - E[z]^2` cancels where the local mean is far from the row mean: the output error is then
set by the float32 input and output (measured up to 2e-5, two-frame windows on long drifting clips
included). On CUDA all sums are float64; float32 batches there go through one Triton kernel that walks
time per row with the same running sums (`specnorm.kernel_sliding`; `SPECNORM_TRITON=0` turns it off:
`specnorm.kernels`).
Float32 values beyond ~1e37 overflow the float32 sums and outputs: NaN/Inf outputs, which the transform's
check reports.

Padded batches (spectrograms carrying `lengths` and `pad_before`, as `AudioToSpec` sets them) go through
`padded_sliding_norm`: each clip is normalized as if alone, its windows shifted to stay inside its own
frames, and the padded frames give 0. Its window sums are differences of one float64 cumulative sum per
row (per-clip edges gathered on the device), slower than the distinct-window path above (measured 2.4x
on a [32, 1, 201, 401] CPU batch with `window=300`, on a busy machine) and as accurate (float32 rounding).

`ShortTimeAudioNormalize` is the waveform counterpart: each sample is divided by the RMS of the
signal in a window of `window_s` seconds around it (same centred window rule), which evens out
the loudness within a clip, a short-time automatic gain control. The sums of squares are float64.
A running float64 sum that has held a loud stretch keeps an absolute error of about 1e-16 of the
loud stretch's sums of squares, so once the window has left a much louder part the RMS is accurate to
about 1e-7 relative up to 60 dB louder, 6e-7 at 80 dB, and 3e-5 (per sample) to 6e-5 (at a hop) at
100 dB (5 s of noise at 16 kHz, 0.1 s windows; `test_quiet_after_a_much_louder_part_is_as_accurate_as_documented`).
The gains follow the RMS to the same relative accuracy.
Per sample, the window sums slide as above, over exact float64 squares. At a hop, they are differences of a float64
cumulative sum taken at the windows' edges; when the edges fall on multiples of `g >= 16` samples
(a hop dividing half the window and the clip length, as for 0.1 s windows at a 0.01 s hop on 5 s
clips), float32 sums over blocks of `g` samples feed it. The interpolation between the RMS values is
written one hop at a time (a broadcast, no gather), and the division happens block by block.

The math is in `specnorm.functional` (`sliding_norm`, `short_time_rms`, `window_bounds`); the transforms
count NaN/Inf outputs on the device and report them in `check()` (`specnorm.functional.FiniteCheck`).
"""

import torch
from fastai.data.transforms import DisplayedTransform
from fastai.torch_core import TensorImageBase
from torch import Tensor

from .audio import AudioTensor
from .functional import (
    INSTANCE_EPS,
    MIN_WINDOW,
    SLIDING_WINDOW,
    FiniteCheck,
    _accumulator_dtype,
    check_eps,
    has_padding,
    padding_of,
    short_time_rms,
    sliding_norm,
    window_bounds,
    window_edges,
)

__all__ = [
    "ShortTimeAudioNormalize",
    "SlidingSpecNorm",
    "padded_sliding_norm",
    "short_time_rms",
    "sliding_norm",
    "window_bounds",
]


def padded_sliding_norm(
    x: Tensor,
    lengths: Tensor | int,
    pad_before: Tensor | int = 0,
    window: int = SLIDING_WINDOW,
    center: bool = True,
    norm_vars: bool = False,
    min_window: int = MIN_WINDOW,
    eps: float = INSTANCE_EPS,
) -> Tensor:
    """`sliding_norm` of padded clips: each clip is its `lengths[i]` frames after `pad_before[i]`, normalized
    with the window rules of the module docstring applied to that clip alone; padded frames give 0.

    The window sums are differences of a cumulative sum along the whole (padded) row of mean-shifted
    values, in float64 (float32 on MPS), gathered at each frame's window edges: per-clip windows with no
    loop and no host read. For a clip of `T` frames this matches `sliding_norm` on the clip alone to
    float32 rounding (tested); it is slower than `sliding_norm`, which computes only the distinct windows.

    Args:
        x: `[B, ..., T]` (a batch: `lengths`, `pad_before` int64 `[B]`) or an item with int `lengths`.
        lengths, pad_before: valid frames of each clip and the padded frames before them.
        window, center, norm_vars, min_window, eps: as `sliding_norm`.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 101, 102, 103, 0, 0]])
        >>> padded_sliding_norm(x, torch.tensor([3]), torch.tensor([1]), window=3)
        tensor([[ 0., -1.,  0.,  1.,  0.,  0.]])
    """
    x = x.as_subclass(Tensor)
    x = x if x.is_floating_point() else x.float()
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"padded_sliding_norm needs frames on the last axis, got shape {tuple(x.shape)}")
    window_bounds(1, window, center, min_window)  # validates window and min_window
    eps = check_eps(eps, positive=norm_vars)
    n_frames, dev = x.shape[-1], x.device
    lengths, pad_before = (
        torch.as_tensor(v, device=dev).as_subclass(Tensor).reshape(-1, 1) for v in (lengths, pad_before)
    )
    u = torch.arange(n_frames, device=dev) - pad_before  # frame index within the clip, [B, T]
    valid = (u >= 0) & (u < lengths)
    start, end = window_edges(u, lengths, window, center, min_window)
    start, end = ((b + pad_before).clamp(0, n_frames) for b in (start, end))
    lead = x.ndim - 2
    shape = (valid.shape[0],) + (1,) * lead + (n_frames,)
    valid, start, end = (t.reshape(shape).expand(x.shape) for t in (valid, start, end))
    acc = _accumulator_dtype(x)
    zx = torch.where(valid, x, 0)
    count_row = valid.sum(-1, keepdim=True).clamp(min=1)
    z = torch.where(valid, zx - zx.sum(-1, keepdim=True, dtype=acc).div(count_row).to(x.dtype), 0).to(acc)
    count = (end - start).clamp(min=1).to(acc)

    def window_sum(v):
        c = torch.nn.functional.pad(v.cumsum(-1), (1, 0))
        return c.gather(-1, end) - c.gather(-1, start)

    mean = window_sum(z) / count
    out = z - mean
    if norm_vars:
        var = (window_sum(z * z) / count - mean * mean).clamp(min=eps * eps)
        out = out * var.rsqrt() * ((end - start) > 1)  # a one-frame window gives 0, as in Kaldi
    return torch.where(valid, out, 0).to(x.dtype)


class SlidingSpecNorm(DisplayedTransform):
    """Short-time mean (and variance) normalization over a sliding window of frames (Kaldi's `apply-cmvn-sliding`).

    Each frequency channel of each clip is normalized by the mean (and with `norm_vars` the
    standard deviation) of a window of frames around each frame; the edge rules are in the module
    docstring. Needs no training statistics. Acts on `AudioSpectrogram` (any `TensorImageBase`);
    plain tensors pass through unchanged (fastai type dispatch). A batch carrying `lengths` (valid
    frames per clip, after `pad_before` padded frames) is normalized clip by clip over its valid
    frames only, and padding comes out as 0 (`padded_sliding_norm`). The output's metadata says
    `standardized=True` with `norm_vars`, else `centred=True` (the mean is removed, the units kept).
    Batches with NaN or Inf outputs are counted on the device; `check()` raises (`FiniteCheck`).

    Args:
        window (int): window length in frames (at 10 ms hop, 300 frames are 3 s).
        center (bool): window centred on the frame (True) or ending at it (False, causal).
        norm_vars (bool): also divide by the window's standard deviation.
        min_window (int): with `center=False`, the fewest frames used at the start of a clip.
        eps (float): floor on the standard deviation (input units), > 0.

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

    def __init__(
        self,
        window: int = SLIDING_WINDOW,
        center: bool = True,
        norm_vars: bool = False,
        min_window: int = MIN_WINDOW,
        eps: float = INSTANCE_EPS,
    ):
        window_bounds(1, window, center, min_window)  # validates window and min_window
        super().__init__()
        self.window, self.center, self.norm_vars, self.min_window = window, center, norm_vars, min_window
        self.eps = check_eps(eps, positive=True)
        self.finite = FiniteCheck(type(self).__name__)

    def check(self) -> None:
        "Raise if a batch since the last check gave NaN or Inf (reads device counts: one host sync)."
        self.finite.check()

    def encodes(self, x: TensorImageBase):
        if has_padding(x):
            lengths, pad_before = padding_of(x)
            out = padded_sliding_norm(
                x,
                lengths,
                pad_before,
                self.window,
                self.center,
                self.norm_vars,
                self.min_window,
                self.eps,
            )
            self.finite.update(out)
        else:  # the NaN/Inf count: on CUDA, added by the kernel as it writes (no extra pass)
            count = self.finite.count_cell(x.as_subclass(torch.Tensor))
            out = sliding_norm(x, self.window, self.center, self.norm_vars, self.min_window, self.eps, count)
        return type(x)(out, **{**x.__dict__, "standardized": self.norm_vars, "centred": not self.norm_vars})


class ShortTimeAudioNormalize(DisplayedTransform):
    """Divide a waveform by its short-time RMS: every `window_s`-second stretch comes out near unit RMS.

    The gain at each sample is `1 / max(rms, floor)`, where `rms` is the root mean square of that
    channel over a centred window of `window_s` seconds (shifted to stay inside the clip; the whole
    clip when it is shorter). With `hop_s`, the RMS is computed every `hop_s` seconds and linearly
    interpolated, for a smoother gain. Silence stays zeros, and the gain never exceeds `1 / floor`.
    Acts on `AudioTensor` items and batches; plain tensors pass through unchanged. NaN or Inf samples
    give NaN outputs, counted on the device (`check()`); as an item transform in DataLoader workers,
    the counts stay in the workers, and the NaN reaches `AudioToSpec`, whose check reports it.

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

    def __init__(self, window_s: float, hop_s: float | None = None, floor: float = 1e-4):
        if not (window_s > 0 and (hop_s is None or hop_s > 0) and floor > 0):
            raise ValueError(f"window_s, hop_s and floor must be positive, not {window_s}, {hop_s}, {floor}")
        super().__init__()
        self.window_s, self.hop_s, self.floor = window_s, hop_s, floor
        self.finite = FiniteCheck(type(self).__name__)

    def check(self) -> None:
        "Raise if a signal since the last check gave NaN or Inf (reads device counts: one host sync)."
        self.finite.check()

    def encodes(self, x: AudioTensor):
        window = max(1, round(self.window_s * x.sr))
        hop = None if self.hop_s is None else max(1, round(self.hop_s * x.sr))
        out = short_time_rms(x, window, hop, floor=self.floor)
        self.finite.update(out)
        return type(x)(out, **x.__dict__)
