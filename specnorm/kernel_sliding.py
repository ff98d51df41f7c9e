"""Sliding-window normalization (`functional.sliding_norm`) on CUDA: one Triton kernel, no scratch buffers.

It computes what `sliding_norm` computes, with the window rules of the `specnorm.sliding` module docstring
(Kaldi's `apply-cmvn-sliding`): each row (a (clip, channel, frequency) series along time) is shifted by its
first value, `z = x - x[0]` (float32; the eager path shifts by the row's mean: any shift leaves the result
unchanged, and the window sums are float64), then frame `t` becomes `z[t] - mean(z[start:end])`, divided with
`norm_vars` by `max(std(z[start:end]), eps)` (population std; a one-frame window gives 0), where
`[start, end) = window_edges(t)`. Why: the eager CUDA path launches a dozen kernels and makes float64 copies of
the batch; this one reads it from memory once (the window's other edges come from cache) and writes it once.
With a `count` cell, it also adds its number of NaN/Inf outputs into it (`FiniteCheck.count_cell`). A NaN or
Inf input makes every frame NaN from the first window that holds it to the end of its row (the running sums
carry it); the eager path's row mean makes the whole row NaN. Either way the count marks the batch.

Launch layout: program `p` owns rows `[p * ROWS, (p + 1) * ROWS)`. It sums the first window but its last frame
(tiles of `4 * CHUNK` frames), then walks time in `[ROWS, CHUNK]` tiles, each tile's loads issued during the tile
before. From frame `t - 1` to `t` each window edge advances by 0 or 1 frame (`_frame_windows` checks this on the
host), so the window sums (float64, of values and squares) are the previous ones plus the frame that enters,
`z[end[t] - 1]`, minus the frame that leaves, `z[start[t] - 1]`: per tile, two shifted loads, a cumulative sum
along time and the carry from the tile before (the first frame's "entering" frame completes the first window). The
edges are computed in the kernel from `t` (integer min/max, as `window_edges`). Offsets are int64. Squares enter
as `(e - l)(e + l)`, as the eager path's, so large equal squares do not cancel. The inverse std is taken in
float64 too: the variance of values beyond ~1e19 overflows float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernel_pcen import tl, triton, triton_enabled

__all__ = ["sliding_rows", "use_kernel"]

# Measured best of five settings on an H200 (benchmarks/gpu_kernels.py), for B = 64 and 256, means only and with
# variances: small programs, many of them, hide the latency of the serial walk along time.
ROWS, CHUNK, NUM_WARPS = 4, 32, 2


def use_kernel(x: Tensor) -> bool:
    "Whether `sliding_norm(x, ...)` may run the Triton kernel: `kernel_pcen.triton_enabled` for `sliding`."
    return triton_enabled(x, kernel="sliding")


def sliding_rows(
    x: Tensor, window: int, center: bool, norm_vars: bool, min_window: int, eps: float, count: Tensor | None = None
) -> Tensor:
    """`sliding_norm` of a float32 `x` `[..., T]` along its last axis, with the Triton kernel.

    Callers normally use `specnorm.functional.sliding_norm`, which checks the arguments and runs this on CUDA
    tensors when `use_kernel` allows.

    Args:
        x: float32 `[..., T]`.
        window, center, norm_vars, min_window, eps: as in `sliding_norm` (`window`, `min_window` >= 1).
        count: None, or a float64 one-element tensor on `x`'s device into which the kernel adds its number of
            NaN/Inf outputs (atomically, only when there are any).

    Shape:
        `[..., T]` -> same shape, float32, contiguous.

    Example:
        >>> import torch
        >>> from specnorm.kernel_sliding import sliding_rows
        >>> sliding_rows(torch.arange(6.0, device="cuda")[None] + 100, 3, True, False, 100, 1e-5)  # doctest: +SKIP
        tensor([[-1.,  0.,  0.,  0.,  0.,  1.]], device='cuda:0')
    """
    if x.ndim < 1 or x.numel() == 0 or x.dtype != torch.float32:
        raise ValueError(f"sliding_rows expects a non-empty float32 [..., T], got {x.dtype} {tuple(x.shape)}")
    if window < 1 or min_window < 1:
        raise ValueError(f"window and min_window must be at least 1 frame, not {window} and {min_window}")
    x = x.contiguous()
    out = torch.empty_like(x)
    n_frames = x.shape[-1]
    n_rows = x.numel() // n_frames
    # the first window ends at frame `end0`; the kernel sums frames [0, end0 - 1) before its walk
    end0 = min(window if center else max(1, min_window), n_frames)
    _sliding_kernel[(triton.cdiv(n_rows, ROWS),)](
        x, out, n_rows, n_frames, window, min_window, end0 - 1, float(eps) ** 2, out if count is None else count,
        CENTER=bool(center), NORM_VARS=bool(norm_vars), HAS_COUNT=count is not None, ROWS=ROWS, CHUNK=CHUNK,
        num_warps=NUM_WARPS,
    )  # fmt: skip
    return out


if triton is not None:

    @triton.jit
    def _edges(t, n_frames, window, min_window, CENTER: tl.constexpr):
        "`window_edges`: frame `t` is normalized over frames `[start, end)`."
        if CENTER:
            start = t - window // 2
            end = start + window - tl.minimum(start, 0)  # shifted right to start at frame 0
        else:
            start = t - window
            end = tl.maximum(t + 1, min_window)  # at the start: look ahead to min_window frames
        start = tl.maximum(start, 0)
        overflow = tl.maximum(end - n_frames, 0)
        return tl.maximum(start - overflow, 0), end - overflow  # shifted left to end at the clip's last frame

    @triton.jit
    def _walk_step(t, rmask, n_frames, window, min_window, CENTER: tl.constexpr):
        """Frames `t`'s windows `[start, end)`, and which frames enter (`end - 1`) and leave (`start - 1`) the window
        from frame `t - 1` to `t` (at frame 0, the first window's last frame enters), `valid`: `t` is a frame."""
        start, end = _edges(t, n_frames, window, min_window, CENTER)
        start_before, end_before = _edges(t - 1, n_frames, window, min_window, CENTER)
        valid = rmask & (t < n_frames)
        enter = valid & ((t == 0) | (end > end_before))
        leave = valid & (t > 0) & (start > start_before)
        return start, end, enter, leave, valid

    @triton.jit
    def _walk_loads(row_ptr, t, rmask, n_frames, window, min_window, CENTER: tl.constexpr):
        "The values the walk reads at frames `t`: the frame entering the window, the frame leaving, frame `t`."
        start, end, enter, leave, valid = _walk_step(t, rmask, n_frames, window, min_window, CENTER)
        x_in = tl.load(row_ptr + end - 1, mask=enter, other=0.0)
        x_out = tl.load(row_ptr + start - 1, mask=leave, other=0.0)
        return x_in, x_out, tl.load(row_ptr + t, mask=valid, other=0.0)

    @triton.jit
    def _sliding_kernel(
        x_ptr, out_ptr, n_rows, n_frames, window, min_window, n_before, eps2, count_ptr,
        CENTER: tl.constexpr, NORM_VARS: tl.constexpr, HAS_COUNT: tl.constexpr, ROWS: tl.constexpr,
        CHUNK: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        rmask = rows[:, None] < n_rows
        row_ptr = x_ptr + rows[:, None] * n_frames
        cols = tl.arange(0, CHUNK)[None, :]
        # the shift: each row's first value (no pass over the row for its mean)
        shift = tl.load(row_ptr, mask=rmask, other=0.0)
        # the first window but its last frame, which enters at frame 0: wide tiles (independent loads, few steps)
        sum1 = tl.zeros((ROWS,), tl.float64)
        sum2 = tl.zeros((ROWS,), tl.float64)
        wide = tl.arange(0, 4 * CHUNK)[None, :]
        for t0 in range(0, n_before, 4 * CHUNK):
            t = t0 + wide
            m = rmask & (t < n_before)
            z = tl.where(m, tl.load(row_ptr + t, mask=m, other=0.0) - shift, 0.0).to(tl.float64)
            sum1 += tl.sum(z, 1)
            sum2 += tl.sum(z * z, 1)
        bad = tl.zeros((ROWS, CHUNK), tl.int32)  # NaN/Inf outputs, per lane
        # the walk: each tile's loads are issued one tile ahead, so their latency overlaps the tile before's scan
        x_in, x_out, x_t = _walk_loads(row_ptr, cols, rmask, n_frames, window, min_window, CENTER)
        for t0 in range(0, n_frames, CHUNK):
            t = t0 + cols
            cur_in, cur_out, cur_t = x_in, x_out, x_t
            x_in, x_out, x_t = _walk_loads(row_ptr, t + CHUNK, rmask, n_frames, window, min_window, CENTER)
            start, end, enter, leave, m = _walk_step(t, rmask, n_frames, window, min_window, CENTER)
            z_in = tl.where(enter, cur_in - shift, 0.0).to(tl.float64)
            z_out = tl.where(leave, cur_out - shift, 0.0).to(tl.float64)
            step = z_in - z_out
            count = (end - start).to(tl.float64)
            s1 = tl.cumsum(step, 1) + sum1[:, None]
            sum1 = tl.sum(tl.where(cols == CHUNK - 1, s1, 0.0), 1)
            local_mean = s1 / count
            y = cur_t - shift - local_mean.to(tl.float32)
            if NORM_VARS:
                s2 = tl.cumsum(step * (z_in + z_out), 1) + sum2[:, None]
                sum2 = tl.sum(tl.where(cols == CHUNK - 1, s2, 0.0), 1)
                # 1 / max(std, eps) in float64: the variance of values beyond ~1e19 overflows float32, its
                # inverse square root does not
                var = s2 / count - local_mean * local_mean
                scale = (1.0 / tl.sqrt(tl.maximum(var, eps2))).to(tl.float32)
                y = y * tl.where(end - start > 1, scale, 0.0)  # a one-frame window gives 0, as in Kaldi
            tl.store(out_ptr + rows[:, None] * n_frames + t, y, mask=m)
            if HAS_COUNT:  # NaN fails the comparison too
                bad += tl.where(m & ~(tl.abs(y) < float("inf")), 1, 0)
        if HAS_COUNT:  # only programs that saw any touch the cell
            n_bad = tl.sum(tl.sum(bad, 1), 0)
            tl.atomic_add(count_ptr, n_bad.to(tl.float64), mask=n_bad > 0)
