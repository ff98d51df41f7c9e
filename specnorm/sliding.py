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
included). On CUDA all sums are float64.

`ShortTimeAudioNormalize` is the waveform counterpart: each sample is divided by the RMS of the
signal in a window of `window_s` seconds around it (same centred window rule), which evens out
the loudness within a clip, a short-time automatic gain control. The sums of squares are float64,
so a quiet stretch after a loud one keeps its precision (relative error about 1e-7). Per sample, the
window sums slide as above, over exact float64 squares. At a hop, they are differences of a float64
cumulative sum taken at the windows' edges; when the edges fall on multiples of `g >= 16` samples
(a hop dividing half the window and the clip length, as for 0.1 s windows at a 0.01 s hop on 5 s
clips), float32 sums over blocks of `g` samples feed it. The interpolation between the RMS values is
written one hop at a time (a broadcast, no gather), and the division happens block by block.
"""

import functools
import math
from typing import NamedTuple

import torch
from fastai.data.transforms import DisplayedTransform
from fastai.torch_core import TensorImageBase

from .audio import AudioTensor
from .instance import _accumulator_dtype, _raise_if_not_finite

__all__ = ["ShortTimeAudioNormalize", "SlidingSpecNorm", "short_time_rms", "sliding_norm", "window_bounds"]


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
        end = end - start.clamp(max=0)  # shift right to start at frame 0
    else:
        start = t - window
        end = torch.clamp(t + 1, min=min_window)  # at the start: look ahead to min_window frames
    start = start.clamp(min=0)
    overflow = (end - n_frames).clamp(min=0)
    return (start - overflow).clamp(min=0), end - overflow  # shift left to end at the last frame


class _Windows(NamedTuple):
    """The distinct windows of `window_bounds`, in frame order, as `_window_sums` and `_per_frame` use them.

    Frames `[0, lead]` use window 0, frame `lead + k` window `k`, the frames after that the last window
    (only the shifted windows at the clip's edges are shared). From window `k - 1` to `k` each edge
    advances by 0 or 1 frame: the frames `enter` come in one per window from window `grow_at` on,
    the frames `leave` go out one per window from window `shrink_at` on. `of` checks this shape.
    """

    count: torch.Tensor  # frames in each window, CPU int64 [K]
    lead: int
    first: slice  # window 0
    enter: slice
    leave: slice
    grow_at: int
    shrink_at: int

    @classmethod
    def of(cls, start, end):
        "The windows of frames `[start[t], end[t])` (CPU int64 tensors from `window_bounds`)."
        n = len(start)
        moves = torch.ones(n, dtype=torch.bool)
        moves[1:] = (start.diff() != 0) | (end.diff() != 0)
        first_frame = moves.nonzero().flatten()
        starts, ends = start[first_frame], end[first_frame]
        k = len(first_frame)
        lead = n - 1 if k == 1 else int(first_frame[1]) - 1
        grows, shrinks = ends.diff().nonzero().flatten() + 1, starts.diff().nonzero().flatten() + 1
        s0, e0, s1, e1 = (int(i) for i in (starts[0], ends[0], starts[-1], ends[-1]))
        runs = all(len(i) == 0 or int(i[-1] - i[0]) + 1 == len(i) for i in (grows, shrinks))
        if (
            lead + k > n
            or int(moves[lead + 1 : lead + k].sum()) != k - 1
            or not runs
            or e1 - e0 != len(grows)
            or s1 - s0 != len(shrinks)
        ):
            raise RuntimeError(f"windows {start.tolist()}, {end.tolist()} do not slide one frame at a time")
        at = lambda steps: int(steps[0]) if len(steps) else k
        return cls(ends - starts, lead, slice(s0, e0), slice(e0, e1), slice(s0, s1), at(grows), at(shrinks))


@functools.lru_cache(maxsize=16)
def _frame_windows(n_frames, window, center, min_window=100):
    "`_Windows` of `window_bounds(n_frames, window, center, min_window)`, kept for the next clip of that length."
    return _Windows.of(*window_bounds(n_frames, window, center, min_window))


@functools.lru_cache(maxsize=16)
def _hop_windows(n, window, hop):
    "The centred windows at samples `0, hop, 2 hop, ...` and `n - 1`: `(start, end)`, CPU int64."
    nodes = torch.arange(0, n, hop)
    if (n - 1) % hop:
        nodes = torch.cat([nodes, torch.tensor([n - 1])])
    return tuple(b[nodes] for b in window_bounds(n, window, center=True))


def _window_sums(v, windows, sums):
    """Sums of `v` along its last axis over `windows` into `sums`.

    `sums` has `v`'s dtype, `[1, ..., K]`; `[2, ..., K]` adds squares.

    The first window is summed directly; every next window adds the frame that enters and removes the
    one that leaves, and one cumulative sum over the windows accumulates these steps. The frames that
    enter (leave) are consecutive, so both are slices of `v`, and the running sums never hold more
    than a window's worth of frames (no prefix sum over the whole clip).
    """
    squares = len(sums) == 2
    first = v[..., windows.first]
    torch.sum(first, -1, out=sums[0, ..., 0])
    if squares:
        torch.linalg.vecdot(first, first, out=sums[1, ..., 0])
    k = sums.shape[-1]
    if k == 1:
        return sums
    enter, leave = v[..., windows.enter], v[..., windows.leave]
    if enter.shape[-1] == leave.shape[-1] == k - 1:  # the window slides: one frame in and one out at every step
        torch.sub(enter, leave, out=sums[0, ..., 1:])
        if squares:  # enter^2 - leave^2 = (enter - leave)(enter + leave): no cancellation of large squares
            torch.add(enter, leave, out=sums[1, ..., 1:]).mul_(sums[0, ..., 1:])
    else:  # a window at the clip's edge grows or shrinks
        sums[..., 1:].zero_()
        grow = slice(windows.grow_at, windows.grow_at + enter.shape[-1])
        shrink = slice(windows.shrink_at, windows.shrink_at + leave.shape[-1])
        for p, power in enumerate((enter, enter * enter)[: len(sums)]):
            sums[p, ..., grow] += power
        for p, power in enumerate((leave, leave * leave)[: len(sums)]):
            sums[p, ..., shrink] -= power
    return sums.cumsum_(-1)


def _per_frame(op, frames, values, lead):
    "`op(frames, values)` in place, value `k` on frame `lead + k`; the frames before or after all take the edge values."
    k = values.shape[-1]
    op(frames[..., :lead], values[..., :1])
    op(frames[..., lead : lead + k], values)
    op(frames[..., lead + k :], values[..., -1:])


_BLOCK = 2**22  # bytes of scratch per block of rows (4 MiB): stays in cache; buffers are allocated once per call


def _row_blocks(n_rows, n_cols, device, dtype):
    "Row ranges of about `_BLOCK` bytes in `dtype` on CPU (one block on an accelerator), and the largest block."
    block = max(1, _BLOCK // (n_cols * dtype.itemsize)) if device.type == "cpu" else max(1, n_rows)
    return [slice(i, i + block) for i in range(0, n_rows, block)], min(block, n_rows)


def sliding_norm(x, window=300, center=True, norm_vars=False, min_window=100, eps=1e-5):
    """Sliding-window mean (and variance) normalization of `x` along its last axis (time).

    Every row (each frequency channel of each clip) is normalized on its own. See the module
    docstring for the window rules and the accuracy. Returns a plain tensor of `x`'s shape and dtype.
    """
    x = x.as_subclass(torch.Tensor)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"sliding_norm needs frames on the last axis, got shape {tuple(x.shape)}")
    n_frames = x.shape[-1]
    windows = _frame_windows(n_frames, window, center, min_window)
    work = torch.promote_types(x.dtype, torch.float32)
    # On CPU a float32 cumulative sum accumulates in float64 and rounds each window sum once: enough for
    # the mean. The variance E[z^2] - E[z]^2 cancels, so its sums are float64 wherever the device has it.
    acc = work if (x.device.type == "cpu" and not norm_vars) else _accumulator_dtype(x)
    count = windows.count.to(x.device, acc)
    one_frame = int(windows.count.min()) == 1
    rows = x.reshape(-1, n_frames)
    out = torch.empty(rows.shape, dtype=work, device=x.device)
    blocks, block = _row_blocks(len(rows), n_frames, x.device, acc)
    sums_buffer = torch.empty((1 + norm_vars, block, len(count)), dtype=acc, device=x.device)
    if acc != work:
        acc_buffer = torch.empty((block, n_frames), dtype=acc, device=x.device)
        stats_buffer = torch.empty_like(sums_buffer, dtype=work)
    last = []
    for b in blocks:
        # any per-row shift leaves the result unchanged; this one keeps the sums small
        z = torch.sub(rows[b], rows[b].mean(-1, keepdim=True, dtype=work), out=out[b])
        zs = z if acc == work else acc_buffer[: len(z)].copy_(z)
        sums = _window_sums(zs, windows, sums_buffer[:, : len(z)]).div_(count)
        last.append(sums[0, :, -1].clone())  # the last window's running sum saw every frame
        if norm_vars:
            sums[1].addcmul_(sums[0], sums[0], value=-1)  # E[z^2] - E[z]^2
        stats = sums if acc == work else stats_buffer[:, : len(z)].copy_(sums)
        _per_frame(torch.Tensor.sub_, z, stats[0], windows.lead)
        if norm_vars:
            scale = stats[1].clamp_(min=eps * eps).rsqrt_()  # 1 / max(std, eps)
            if one_frame:
                scale.mul_(count > 1)  # a one-frame window gives 0, as in Kaldi
            _per_frame(torch.Tensor.mul_, z, scale, windows.lead)
    _raise_if_not_finite(torch.cat(last), x, "sliding_norm")
    return out.view(x.shape).to(x.dtype)


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
        return type(x)(out, **{**x.__dict__, "standardized": True})


def _node_rms(x, start, end):
    """RMS of `x` over windows `[start[k], end[k])` a hop apart, from a float64 cumulative sum of squares.

    When all window edges are multiples of some `g >= 16` (a hop that divides half the window and the
    clip length), the squares are first summed over blocks of `g` samples (float32 sums of positive
    terms, exact to about 1e-7 relative), which makes the sequential cumulative sum `g` times shorter;
    otherwise the float64 squares of every sample are summed.
    """
    g = math.gcd(*torch.cat([start, end]).tolist())
    if g >= 16:  # below that, summing tiny blocks is slower than summing samples
        blocks = x.view(len(x), -1, g)
        prefix = torch.linalg.vecdot(blocks, blocks).to(_accumulator_dtype(x)).cumsum_(-1)
    else:
        g, prefix = 1, x.to(_accumulator_dtype(x), copy=True).square_().cumsum_(-1)
    at = lambda i: (i // g - 1).clamp(min=0).to(prefix.device)  # prefix[j] sums the first (j + 1) g samples
    sums = prefix.index_select(-1, at(end)) - prefix.index_select(-1, at(start)) * (start > 0).to(prefix)
    return sums.div_((end - start).to(sums)).clamp_(min=0).sqrt_().to(x.dtype), prefix[..., -1]


def _interpolate(env, values, hop):
    "Fill `env` [R, n] by linear interpolation of `values` taken at samples `0, hop, 2 hop, ...` and `n - 1`."
    n = env.shape[-1]
    full = (n - 1) // hop  # whole hops; the last node is `n - 1`, `full * hop` or after it
    slopes = values.diff(dim=-1)
    if full:  # one broadcast multiply-add per hop (torch.lerp broadcasts four times slower)
        weight = torch.arange(hop, device=env.device, dtype=env.dtype) / hop
        hops = env[..., : full * hop].view(-1, full, hop)
        torch.mul(slopes[..., :full, None], weight, out=hops).add_(values[..., :full, None])
    rest = n - full * hop  # samples from node `full` to the end
    if rest > 1:
        weight = torch.arange(rest, device=env.device, dtype=env.dtype) / (rest - 1)
        torch.mul(slopes[..., full : full + 1], weight, out=env[..., full * hop :]).add_(values[..., full : full + 1])
    else:
        env[..., full * hop :] = values[..., full : full + 1]


def _short_time_rms(x, window, hop, who, floor=None):
    "`short_time_rms`, or with `floor` directly `x / max(rms, floor)`, block by block while the block is in cache."
    x = x.as_subclass(torch.Tensor)
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"{who}: got an empty signal of shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    n = x.shape[-1]
    acc = _accumulator_dtype(x)
    rows = x.reshape(-1, n).to(torch.promote_types(x.dtype, torch.float32))  # half precision: sums in float32 at least
    env = torch.empty(rows.shape, dtype=rows.dtype, device=x.device)
    blocks, block = _row_blocks(len(rows), n, x.device, acc)
    if hop is None:
        windows = _frame_windows(n, window, center=True)
        count = windows.count.to(x.device, acc)
        power_buffer = torch.empty((block, n), dtype=acc, device=x.device)
        sums_buffer = torch.empty((1, block, len(count)), dtype=acc, device=x.device)
    else:
        start, end = _hop_windows(n, window, hop)
    totals = []
    for b in blocks:
        if hop is None:
            power = power_buffer[: len(rows[b])].copy_(rows[b]).square_()  # float64: exact squares, and so their sums
            sums = _window_sums(power, windows, sums_buffer[:, : len(power)])[0]
            totals.append(sums[..., -1].clone())  # the last window's running sum saw every sample
            _per_frame(torch.Tensor.copy_, env[b], sums.div_(count).clamp_(min=0).sqrt_(), windows.lead)
        else:
            rms, total = _node_rms(rows[b], start, end)
            totals.append(total)  # the sum of all squares
            _interpolate(env[b], rms, hop)
        if floor is not None:
            torch.div(rows[b], env[b].clamp_(min=floor), out=env[b])
    _raise_if_not_finite(torch.cat(totals), x, who)
    return env.view(x.shape).to(x.dtype)


def short_time_rms(x, window, hop=None):
    """RMS of `x` along its last axis in a centred window of `window` samples around each sample.

    Windows follow the `center=True` rule (shifted to stay inside the clip). With `hop`, the RMS is
    taken at samples `0, hop, 2 hop, ...` and at the last sample, and linearly interpolated between
    them. The sums of squares are float64, so a quiet stretch after a loud one keeps its precision
    (see the module docstring). Returns a plain float tensor of `x`'s shape; raises on NaN or Inf.
    """
    return _short_time_rms(x, window, hop, "short_time_rms")


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
        window = max(1, round(self.window_s * x.sr))
        hop = None if self.hop_s is None else max(1, round(self.hop_s * x.sr))
        out = _short_time_rms(x, window, hop, "ShortTimeAudioNormalize", floor=self.floor)
        return type(x)(out, **x.__dict__)
