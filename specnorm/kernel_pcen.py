"""PCEN in one pass on CUDA: a Triton kernel that reads each value once and writes its PCEN once.

It computes what `specnorm.functional.pcen` computes (with `max_size=1`), as `librosa.pcen` does:

    M[t] = (1 - b) M[t-1] + b E[t],  M[-1] = 1          (per row, along time)
    PCEN = (E / (eps + M)^gain + bias)^power - bias^power

with `gain`, `bias`, `power` and `b` numbers or per-channel `[F]` tensors, and the two special cases of
`pcen`: `power == 0` (a number) gives `log1p(E / (eps + M)^gain)`, `bias == 0` (a number) gives
`(E / (eps + M)^gain)^power`. Why: the eager CUDA path is a log-depth doubling scan (about nine passes over the
batch for T = 401 frames) followed by an elementwise chain of separate kernels; this kernel keeps the smoother
state in registers and makes one read and one write of the batch, with no host sync.

Launch layout: the input is viewed as `R = numel / T` rows of `T` contiguous frames (a row is one
(clip, channel, frequency) series; its frequency is `row % F`). Program `p` owns rows `[p * ROWS, (p + 1) * ROWS)`
and walks time in tiles of `[ROWS, CHUNK]` frames, loaded and stored coalesced along time. Within a tile the
recursion is an associative scan of the affine maps `m -> a m + b E[t]` (`a = 1 - b`), whose composition gives
both the tile's response from a zero state and the decay `a^(j+1)` of the state carried in; the state leaving
the tile is its last column. Each step issues the next tile's load before its own math, so the load overlaps
it. Offsets are int64 (a big batch has more than 2**31 values). Masked lanes (rows past
`R`, frames past `T`) load 0 and are never stored.

`log1p` and `expm1` are computed here from `log2`/`exp2` plus short series near 0 (a Taylor series for
`expm1`, the `atanh` series for `log1p`), so their relative accuracy does not hinge on how the compiler lowers
`log`/`exp` near 1 (the GPU's fast approximations are accurate in absolute, not relative, terms there). The
math is float32, as the eager path.

Dispatch: `triton_enabled` is the rule of all the Triton kernels (a float32 CUDA tensor, Triton importable,
`SPECNORM_TRITON` not "0", the kill switch, no gradient needed); `use_kernel` adds PCEN's: parameter tensors
with 1 or `F` values on the input's device. Triton is imported with this module, which `functional.pcen`
imports only when a CUDA tensor arrives. Without CUDA, `TRITON_INTERPRET=1` (set before this import) runs the
kernel on CPU tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernels import kernels_on

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton: `use_kernel` says no, and nothing below runs
    triton = tl = None

__all__ = ["pcen_rows", "triton_enabled", "use_kernel"]

# Rows per program, frames per tile, warps: 2 values of a tile per thread. Measured best of five settings on an
# H200 (benchmarks/gpu_kernels.py) for B = 64 and 256: more, smaller programs.
ROWS, CHUNK, NUM_WARPS = 8, 32, 4
MIN_CHUNK = 16  # short series still get a 16-frame tile (masked): no degenerate [ROWS, 1] scans to compile
_GENERAL, _LOG, _ZERO_BIAS = 0, 1, 2  # the output formula, picked on the host from the arguments


def triton_enabled(x: Tensor, *tensors: Tensor, kernel: str = "pcen") -> bool:
    """The dispatch rule of the Triton kernels: `x` is a float32 CUDA tensor, Triton imports, the environment
    variable `SPECNORM_TRITON` is not "0" (the kill switch), and no gradient is needed through `x` or `tensors`
    (the kernels have no backward: training takes the eager path). Flags and dtypes only: no host read."""
    if triton is None or x.dtype != torch.float32 or not kernels_on(x, kernel):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *tensors)))


def use_kernel(x: Tensor, *params) -> bool:
    """Whether `pcen(x, ...)` with these `gain`, `bias`, `power`, `b` may run the Triton kernel.

    Yes when `triton_enabled` (so `TrainablePCEN` trains through the eager path) and each parameter is a number
    or a tensor of 1 or `F = x.shape[-2]` values on `x`'s device.
    """
    tensors = [p for p in params if torch.is_tensor(p)]
    return triton_enabled(x, *tensors) and all(p.numel() in (1, x.shape[-2]) and p.device == x.device for p in tensors)


def _param(v, like: Tensor):
    "A number stays a number; a tensor becomes a contiguous float32 vector and its stride over the rows' channels."
    if not torch.is_tensor(v):
        return float(v), 0, False
    v = v.detach().to(torch.float32).reshape(-1).contiguous()
    return v, int(v.numel() > 1), True


def pcen_rows(
    x: Tensor,
    b: float | Tensor,
    gain: float | Tensor,
    bias: float | Tensor,
    power: float | Tensor,
    eps: float,
    count: Tensor | None = None,
) -> Tensor:
    """PCEN of a float32 spectrogram `x` `[..., F, T]` with the Triton kernel, `M[-1] = 1`, no max filter.

    Callers normally use `specnorm.functional.pcen`, which runs this on CUDA tensors when `use_kernel` allows.

    Args:
        x: float32 linear spectrogram, frequency then time (last).
        b: smoothing coefficient in [0, 1], a number or a per-channel tensor of 1 or `F` values.
        gain, bias, power: as in `librosa.pcen`, numbers or per-channel tensors of 1 or `F` values;
            `power == 0` and `bias == 0` as numbers select `pcen`'s special cases.
        eps: the floor added to the smoother.
        count: None, or a float64 one-element tensor on `x`'s device (`FiniteCheck.count_cell`) into which the
            kernel adds its number of negative inputs and NaN/Inf outputs (atomically, only when there are any).

    Shape:
        `[..., F, T]` -> same shape, float32, contiguous.

    Example:
        >>> import torch
        >>> from specnorm.kernel_pcen import pcen_rows
        >>> pcen_rows(torch.rand(8, 1, 64, 400, device="cuda"), 0.025, 0.98, 2.0, 0.5, 1e-6).shape  # doctest: +SKIP
        torch.Size([8, 1, 64, 400])
    """
    if x.ndim < 2 or x.numel() == 0:
        raise ValueError(f"pcen_rows expects a non-empty spectrogram [..., F, T], got shape {tuple(x.shape)}")
    if x.dtype != torch.float32:
        raise ValueError(f"pcen_rows computes in float32, got {x.dtype}")
    x = x.contiguous()
    out = torch.empty_like(x)
    n_freq, n_frames = x.shape[-2], x.shape[-1]
    n_rows = x.numel() // n_frames
    mode = _LOG if not torch.is_tensor(power) and power == 0 else _GENERAL
    if mode == _GENERAL and not torch.is_tensor(bias) and bias == 0:
        mode = _ZERO_BIAS
    (b, b_step, b_vec), (g, g_step, g_vec) = _param(b, x), _param(gain, x)
    (s, s_step, s_vec), (p, p_step, p_vec) = _param(bias, x), _param(power, x)
    for name, v in dict(b=b, gain=g, bias=s, power=p).items():
        if torch.is_tensor(v) and v.numel() not in (1, n_freq):
            raise ValueError(f"pcen_rows: {name} has {v.numel()} values; expected 1 or F = {n_freq}")
    chunk = min(CHUNK, max(MIN_CHUNK, triton.next_power_of_2(n_frames)))
    _pcen_kernel[(triton.cdiv(n_rows, ROWS),)](
        x, out, n_rows, n_frames, n_freq, b, b_step, g, g_step, s, s_step, p, p_step, float(eps),
        out if count is None else count,
        B_VEC=b_vec, G_VEC=g_vec, S_VEC=s_vec, P_VEC=p_vec, MODE=mode, HAS_COUNT=count is not None,
        ROWS=ROWS, CHUNK=chunk, num_warps=NUM_WARPS,
    )  # fmt: skip
    return out


if triton is not None:

    @triton.jit
    def _affine_compose(a1, c1, a2, c2):
        "m -> a1 m + c1, then m -> a2 m + c2."
        return a1 * a2, a2 * c1 + c2

    @triton.jit
    def _per_row(v, step, f, rmask, VEC: tl.constexpr):
        "A parameter per row as a [ROWS, 1] column: loaded at the row's channel, or a number broadcast."
        if VEC:
            return tl.load(v + f * step, mask=rmask, other=1.0)[:, None]
        else:
            return tl.zeros_like(f.to(tl.float32))[:, None] + v

    @triton.jit
    def _log1p(z):
        "log(1 + z), relatively accurate near 0: 2 atanh(s), s = z / (2 + z), as an odd series for |z| <= 1/2."
        s = z / (2.0 + z)
        s2 = s * s
        series = 1.0 + s2 * (1 / 3 + s2 * (1 / 5 + s2 * (1 / 7 + s2 * (1 / 9 + s2 * (1 / 11 + s2 * (1 / 13))))))
        return tl.where(tl.abs(z) <= 0.5, 2.0 * s * series, tl.log2(1.0 + z) * 0.6931471805599453)

    @triton.jit
    def _expm1(w):
        "exp(w) - 1, relatively accurate near 0: a Taylor series for |w| <= 1/2."
        series = w * (
            1.0 + w * (1 / 2 + w * (1 / 6 + w * (1 / 24 + w * (1 / 120 + w * (1 / 720 + w * (1 / 5040 + w / 40320))))))
        )
        return tl.where(tl.abs(w) <= 0.5, series, tl.exp2(w * 1.4426950408889634) - 1.0)

    @triton.jit
    def _pcen_kernel(
        x_ptr, out_ptr, n_rows, n_frames, n_freq,
        b, b_step, gain, gain_step, bias, bias_step, power, power_step, eps, count_ptr,
        B_VEC: tl.constexpr, G_VEC: tl.constexpr, S_VEC: tl.constexpr, P_VEC: tl.constexpr,
        MODE: tl.constexpr, HAS_COUNT: tl.constexpr, ROWS: tl.constexpr, CHUNK: tl.constexpr,
    ):  # fmt: skip
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        rmask = rows < n_rows
        f = rows % n_freq
        b_r = _per_row(b, b_step, f, rmask, B_VEC)
        neg_gain = -_per_row(gain, gain_step, f, rmask, G_VEC)
        bias_r = _per_row(bias, bias_step, f, rmask, S_VEC)
        power_r = _per_row(power, power_step, f, rmask, P_VEC)
        decay = tl.zeros((ROWS, CHUNK), tl.float32) + (1.0 - b_r)
        cols = tl.arange(0, CHUNK)[None, :]
        base = rows[:, None] * n_frames
        state = tl.zeros((ROWS,), tl.float32) + 1.0  # M[-1] = 1: the steady state for a unit input
        e_next = tl.load(x_ptr + base + cols, mask=rmask[:, None] & (cols < n_frames), other=0.0)
        bad = tl.zeros((ROWS, CHUNK), tl.int32)  # negative inputs and NaN/Inf outputs, per lane
        for t0 in range(0, n_frames, CHUNK):
            t = t0 + cols
            mask = rmask[:, None] & (t < n_frames)
            e = e_next
            # the next tile's load is issued now and waited for only in the next step: it overlaps this one's math
            e_next = tl.load(x_ptr + base + t + CHUNK, mask=rmask[:, None] & (t + CHUNK < n_frames), other=0.0)
            # (A, S)[j]: the tile's frames 0..j composed: M[t0 + j] = A[j] M[t0 - 1] + S[j]
            a_cum, s_cum = tl.associative_scan((decay, b_r * e), 1, _affine_compose)
            m = s_cum + a_cum * state[:, None]
            state = tl.sum(tl.where(cols == CHUNK - 1, m, 0.0), 1)
            agc = e * tl.exp2(neg_gain * tl.log2(eps + m))
            if MODE == 1:  # _LOG: power == 0
                y = _log1p(agc)
            elif MODE == 2:  # _ZERO_BIAS: bias == 0: agc^power; 0^power is 0, and 1 for power 0, as torch.pow
                zero = agc == 0
                y = tl.exp2(power_r * tl.log2(tl.where(zero, 1.0, agc)))  # no log2(0) on padded lanes
                y = tl.where(power_r == 0, 1.0, tl.where(zero, 0.0, y))
            else:
                y = tl.exp2(power_r * tl.log2(bias_r)) * _expm1(power_r * _log1p(agc / bias_r))
            tl.store(out_ptr + base + t, y, mask=mask)
            if HAS_COUNT:  # NaN fails the comparison too
                bad += tl.where(mask & ((e < 0) | ~(tl.abs(y) < float("inf"))), 1, 0)
        if HAS_COUNT:  # only programs that saw any touch the cell
            n_bad = tl.sum(tl.sum(bad, 1), 0)
            tl.atomic_add(count_ptr, n_bad.to(tl.float64), mask=n_bad > 0)
