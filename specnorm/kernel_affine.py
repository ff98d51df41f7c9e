"""Triton kernels for CUDA batches: the checked affine of `SpecNormalize` and per-clip instance norm.

Eager PyTorch runs `x * scale + shift` and the NaN/Inf check of its output as separate passes over the
batch (each a read of the whole batch, plus a few small kernels to mark it), and instance norm as a
statistics kernel, a subtraction and a division. These kernels fuse them; they are used on CUDA tensors
only, and the eager code in `specnorm.functional` stays the CPU path and the reference.

- `affine(x, scale, shift, count)`: `y = x * scale[c] + shift[c]` in ONE pass, `c` the statistic a value
  belongs to (`functional.affine_layout`: the batch as `[before, channels, run]`). With a `count` cell
  (`FiniteCheck.count_cell`), each block also counts the NaN/Inf values it wrote and, only when it saw
  any, adds the count atomically into that float64 cell: marking a batch costs no extra kernel and no
  host sync. Launch layout: statistics given as numbers use flat blocks of `_FLAT` values; tensor
  statistics use 2-D tiles of rows of `run` values (row `r` belongs to channel `r % channels`), the
  scale and shift loaded once per row; 1-D grid, int64 offsets.
- `instance_norm(x, dims, eps, count)`: `(x - mean) * (1 / max(std, eps))` per group of the trailing dims
  `dims` (each clip's channel, clip or frequency row). Two launches: a statistics kernel writes float64
  partial sums of `x - x0` and `(x - x0)^2` per (group, split), `x0` the group's first value (a shift
  that keeps the sums free of cancellation and makes a constant group's variance exactly 0); the
  normalize kernel combines a row's partials and centres before scaling, `((x - x0) - (mean - x0)) * s`,
  so a constant group gives exact zeros and an offset far above the std costs no accuracy, and counts its
  NaN/Inf outputs into `count` with one predicated atomic add per bad value (`InstanceSpecNorm`'s check;
  a group whose float32 squares overflowed gets NaN). Each lane of
  the statistics kernel adds a few values in `x`'s dtype, lanes and splits are summed in float64: the
  outputs stay within 1e-6 (in units of std) of a float64 two-pass, a few float32 roundings.

Measured on an H200 (triton 3.6, `[B, 1, 201, 401]` float32, GPU time / `x.clone()`'s, BENCHMARKS.md):
`SpecNormalize` (the checked affine) 0.84x (one value) and 1.11x (per frequency row) at B=64, 1.00x and 1.14x
at B=256; `InstanceSpecNorm` with its count 1.94x / 1.77x over `(2, 3)` and 2.45x / 2.23x over `(3,)` at
B=64 / 256 (rows of 401 values are not 16-byte aligned, so every load is a scalar one).

Dispatch (`enabled`): CUDA tensors, when triton imports and the environment variable `SPECNORM_TRITON`
is not `"0"` (the kill switch). Triton is imported lazily, on the first CUDA tensor, so importing
specnorm never needs it. The launchers themselves run on any tensor triton can address: on the CPU
under its interpreter (`TRITON_INTERPRET=1`, how the tests run without a GPU).
"""

import math

import torch
from torch import Tensor

from .kernels import kernels_on

__all__ = ["affine", "enabled", "instance_layout", "instance_norm"]

_FLAT = 4096  # values per program of the flat affine
_TILE = 4096  # values per program of a 2-D tile (rows x columns)
_MAX_COLS = 1024  # columns of a tile, at most
# The instance normalize kernel's tiles: at most 2048 values, 512 columns (H200, B=64: 1.9x a clone with its
# count, 2.1x with tiles of 4096 values; benchmarks/gpu_kernels.py compares them).
_INSTANCE_TILE, _INSTANCE_COLS = 2048, 512
_PROGRAMS = 16384  # statistics programs to aim for: many per SM, so the reduction runs at full bandwidth
_STATS_TILE = 1024  # values per step of a statistics program (measured best of 1024-4096 on an H200)
_MAX_SPLITS = 64  # programs per group of the statistics kernel, at most


try:  # imported only with this module, which specnorm imports on the first CUDA tensor
    import triton
    import triton.language as tl
except ImportError:  # no triton: `enabled` says so, and the eager path runs
    triton = tl = None

# Without triton, the decorator leaves plain functions that are never called.
_jit = triton.jit if triton is not None else (lambda fn: fn)


@_jit
def _affine_flat(x_ptr, y_ptr, n, scale, shift, count_ptr, HAS_COUNT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    y = (x * scale + shift).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + offs, y, mask=mask)
    if HAS_COUNT:  # NaN fails the comparison too; only blocks that saw any touch the cell
        bad = tl.sum(tl.where(mask, tl.where(tl.abs(y) < float("inf"), 0, 1), 0), axis=0)
        tl.atomic_add(count_ptr, bad.to(tl.float64), mask=bad > 0)


@_jit
def _tile_of(col_tiles, ROWS: tl.constexpr, COLS: tl.constexpr):
    "This program's 2-D tile: its rows `r` and columns `t` (int64), `col_tiles` tiles to a block of rows."
    pid = tl.program_id(0).to(tl.int64)
    return (pid // col_tiles) * ROWS + tl.arange(0, ROWS), (pid % col_tiles) * COLS + tl.arange(0, COLS)


@_jit
def _affine_rows(
    x_ptr,
    y_ptr,
    scale_ptr,
    shift_ptr,
    rows,
    run,
    channels,
    col_tiles,
    count_ptr,
    HAS_COUNT: tl.constexpr,
    ROWS: tl.constexpr,
    COLS: tl.constexpr,
):
    r, t = _tile_of(col_tiles, ROWS, COLS)
    row_ok = r < rows
    c = r % channels
    scale = tl.load(scale_ptr + c, mask=row_ok, other=0.0)
    shift = tl.load(shift_ptr + c, mask=row_ok, other=0.0)
    mask = row_ok[:, None] & (t < run)[None, :]
    offs = r[:, None] * run + t[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    y = (x * scale[:, None] + shift[:, None]).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + offs, y, mask=mask)
    if HAS_COUNT:  # NaN fails the comparison too; only blocks that saw any touch the cell
        bad = tl.sum(tl.sum(tl.where(mask, tl.where(tl.abs(y) < float("inf"), 0, 1), 0), axis=1), axis=0)
        tl.atomic_add(count_ptr, bad.to(tl.float64), mask=bad > 0)


@_jit
def _instance_stats(x_ptr, part_ptr, rows, n, splits, chunk, ROWS: tl.constexpr, COLS: tl.constexpr):
    # part[r, s] = (sum(x - x0), sum((x - x0)^2)) over the split s of row r, x0 its first value; a program
    # sums ROWS rows (short rows: many per program) over one split, COLS values at a time. Each lane adds up
    # chunk / COLS values in x's dtype (at most a few: _MAX_SPLITS splits), then the lanes are summed in
    # float64: float64 arithmetic on every value (a quarter-rate conversion, half-rate adds) ran at half the
    # memory bandwidth.
    pid = tl.program_id(0).to(tl.int64)
    r = (pid // splits) * ROWS + tl.arange(0, ROWS)
    s = pid % splits
    row_ok = r < rows
    x0 = tl.load(x_ptr + r * n, mask=row_ok, other=0.0)
    start = s * chunk
    acc1 = tl.zeros((ROWS, COLS), dtype=x_ptr.dtype.element_ty)
    acc2 = tl.zeros((ROWS, COLS), dtype=x_ptr.dtype.element_ty)
    for i in range(0, chunk, COLS):
        t = start + i + tl.arange(0, COLS)
        mask = row_ok[:, None] & ((t < n) & (t < start + chunk))[None, :]
        x = tl.load(x_ptr + r[:, None] * n + t[None, :], mask=mask, other=0.0)
        d = tl.where(mask, x - x0[:, None], 0.0)
        acc1 += d
        acc2 += d * d
    out = part_ptr + (r * splits + s) * 2
    tl.store(out, tl.sum(acc1.to(tl.float64), axis=1), mask=row_ok)
    tl.store(out + 1, tl.sum(acc2.to(tl.float64), axis=1), mask=row_ok)


@_jit
def _instance_apply(
    x_ptr,
    y_ptr,
    part_ptr,
    rows,
    n,
    splits,
    col_tiles,
    eps,
    count_ptr,
    HAS_COUNT: tl.constexpr,
    SPLITS: tl.constexpr,
    ROWS: tl.constexpr,
    COLS: tl.constexpr,
):
    r, t = _tile_of(col_tiles, ROWS, COLS)
    row_ok = r < rows
    # the row's statistics from its partial sums (a few values: recomputed by each tile of the row)
    s = tl.arange(0, SPLITS)
    pmask = row_ok[:, None] & (s < splits)[None, :]
    poffs = (r[:, None] * splits + s[None, :]) * 2
    s1 = tl.sum(tl.load(part_ptr + poffs, mask=pmask, other=0.0), axis=1)
    s2 = tl.sum(tl.load(part_ptr + poffs + 1, mask=pmask, other=0.0), axis=1)
    x0 = tl.load(x_ptr + r * n, mask=row_ok, other=0.0)
    d = s1 / n  # mean - x0
    var = tl.maximum(s2 / n - d * d, 0.0)
    # NaN where a lane's float32 squares overflowed (values beyond ~1.8e19): reported, not silent zeros
    scale = tl.where(var < float("inf"), 1.0 / tl.maximum(tl.sqrt(var), eps), float("nan")).to(x_ptr.dtype.element_ty)
    mask = row_ok[:, None] & (t < n)[None, :]
    offs = r[:, None] * n + t[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    # x - mean as (x - x0) - d: both differences are on the scale of the std, so a large offset costs no
    # accuracy (a mean rounded to float32 would: 1e4 +- 1 is off by ~4e-5 std); a constant row gives 0 - 0
    y = (((x - x0[:, None]) - d.to(x_ptr.dtype.element_ty)[:, None]) * scale[:, None]).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + offs, y, mask=mask)
    if HAS_COUNT:
        # one predicated atomic add per NaN/Inf value: a tile of finite values reduces nothing (the tile-wide sum
        # of _affine_rows cost this kernel a quarter of its time on an H200)
        bad = mask & ~(tl.abs(y) < float("inf"))
        tl.atomic_add(count_ptr + offs * 0, tl.where(bad, 1.0, 0.0).to(tl.float64), mask=bad)


def enabled(x: Tensor) -> bool:
    """Whether `x` takes the Triton kernels: a CUDA tensor, triton importable, `SPECNORM_TRITON` not `"0"`.

    Example:
        >>> import torch
        >>> from specnorm.kernel_affine import enabled
        >>> enabled(torch.zeros(3))  # a CPU tensor: the eager path
        False
    """
    return triton is not None and kernels_on(x, "affine")


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _tile(rows: int, cols: int, size: int | None = None, max_cols: int | None = None) -> tuple[int, int]:
    "A tile `(ROWS, COLS)` of about `size` values (`_TILE`), powers of two, no wider than the data needs."
    size, max_cols = size or _TILE, max_cols or _MAX_COLS  # read at each call: the benchmarks vary them
    width = min(_pow2(cols), max_cols)
    return min(max(1, size // width), _pow2(rows)), width


def affine(x: Tensor, scale: Tensor | float, shift: Tensor | float, count: Tensor | None = None) -> Tensor:
    """`x * scale + shift` in one kernel; with `count`, also add the number of NaN/Inf outputs into it.

    Args:
        x: a contiguous floating tensor (CUDA; or CPU under `TRITON_INTERPRET=1`).
        scale, shift: numbers (one statistic), or tensors of one statistic shape broadcastable to `x`
            with a `functional.affine_layout`, of `x`'s dtype and device.
        count: a float64 one-element tensor on `x`'s device (`FiniteCheck.count_cell`) or None.

    Shape:
        `x` -> same shape and dtype.

    Example:
        >>> import torch
        >>> from specnorm.functional import FiniteCheck
        >>> from specnorm.kernel_affine import affine
        >>> x = torch.randn(8, 1, 201, 401, device="cuda")  # doctest: +SKIP
        >>> fc = FiniteCheck("SpecNormalize")  # doctest: +SKIP
        >>> y = affine(x, 0.1, 5.0, fc.count_cell(x))  # doctest: +SKIP
    """
    from .functional import affine_layout

    x = x.as_subclass(Tensor)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if not x.numel():
        return y
    has_count = count is not None
    count = count if has_count else y
    if not torch.is_tensor(scale):
        if not x.is_contiguous():
            raise ValueError(f"kernel_affine.affine needs a contiguous batch, got strides {x.stride()}")
        n = x.numel()
        _affine_flat[(math.ceil(n / _FLAT),)](x, y, n, float(scale), float(shift), count, has_count, _FLAT)
        return y
    layout = affine_layout(x, scale.shape)
    if layout is None or tuple(shift.shape) != tuple(scale.shape):
        raise ValueError(
            f"kernel_affine.affine: statistics of shape {tuple(scale.shape)} and {tuple(shift.shape)} have no "
            f"[before, channels, run] layout over a batch of shape {tuple(x.shape)} (strides {x.stride()})"
        )
    before, channels, run = layout
    rows = before * channels
    tile_rows, tile_cols = _tile(rows, run)
    col_tiles = math.ceil(run / tile_cols)
    grid = (math.ceil(rows / tile_rows) * col_tiles,)
    scale, shift = scale.contiguous(), shift.contiguous()
    _affine_rows[grid](x, y, scale, shift, rows, run, channels, col_tiles, count, has_count, tile_rows, tile_cols)
    return y


def instance_layout(x: Tensor, dims: tuple[int, ...]) -> tuple[int, int] | None:
    """`x` as `[groups, n]` for statistics over the sorted `dims`, or None unless they are its trailing dims
    and `x` is contiguous (other layouts take the eager path).

    Example:
        >>> import torch
        >>> from specnorm.kernel_affine import instance_layout
        >>> x = torch.zeros(4, 2, 8, 50)
        >>> instance_layout(x, (2, 3)), instance_layout(x, (3,)), instance_layout(x, (1, 3))
        ((8, 400), (64, 50), None)
    """
    if not dims or tuple(dims) != tuple(range(x.ndim - len(dims), x.ndim)) or not x.is_contiguous():
        return None
    n = math.prod(x.shape[x.ndim - len(dims) :])
    return (x.numel() // n if n else 0), n


def instance_norm(x: Tensor, dims: tuple[int, ...], eps: float, count: Tensor | None = None) -> Tensor:
    """`(x - mean) * (1 / max(std, eps))` over the trailing `dims` of `x`, population std: two kernels; with
    `count`, the second also adds the number of NaN/Inf outputs into it.

    Args:
        x: a contiguous float32 or float64 tensor (CUDA; or CPU under `TRITON_INTERPRET=1`).
        dims: the reduced dims, sorted, trailing (`instance_layout`).
        eps: floor on the std (> 0).
        count: a float64 one-element tensor on `x`'s device (`FiniteCheck.count_cell`) or None.

    Shape:
        `x` -> same shape and dtype.

    Example:
        >>> import torch
        >>> from specnorm.kernel_affine import instance_norm
        >>> y = instance_norm(torch.randn(8, 1, 201, 401, device="cuda"), (2, 3), 1e-5)  # doctest: +SKIP
    """
    x = x.as_subclass(Tensor)
    layout = instance_layout(x, dims)
    if layout is None:
        raise ValueError(f"kernel_affine.instance_norm: dims {dims} are not the trailing dims of {tuple(x.shape)}")
    groups, n = layout
    y = torch.empty_like(x)
    if not x.numel():
        return y
    # a tile of rows (short rows) or a split of one row per program, enough programs to fill the GPU, and at
    # most _MAX_SPLITS partial sums per row for the normalize kernel to combine
    rows_per, cols = _tile(groups, n, _STATS_TILE)
    row_blocks = math.ceil(groups / rows_per)
    splits = min(max(1, _PROGRAMS // row_blocks), math.ceil(n / cols), _MAX_SPLITS)
    chunk = math.ceil(math.ceil(n / splits) / cols) * cols  # values per program, whole steps
    splits = math.ceil(n / chunk)
    part = torch.empty(groups * splits * 2, dtype=torch.float64, device=x.device)
    _instance_stats[(row_blocks * splits,)](x, part, groups, n, splits, chunk, rows_per, cols)
    tile_rows, tile_cols = _tile(groups, n, _INSTANCE_TILE, _INSTANCE_COLS)
    col_tiles = math.ceil(n / tile_cols)
    grid = (math.ceil(groups / tile_rows) * col_tiles,)
    has_count = count is not None
    _instance_apply[grid](
        x, y, part, groups, n, splits, col_tiles, float(eps), count if has_count else y, has_count,
        _pow2(splits), tile_rows, tile_cols,
    )  # fmt: skip
    return y
