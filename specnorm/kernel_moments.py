"""Triton kernels for `StatsRecorder.update` on CUDA: a batch's exact moments folded into the running ones.

What: the float64 `(count, mean, M2)` of each statistic of a batch (the values of `x` sharing an index
outside the reduced dims), its NaN/Inf count, and their fold into a recorder's running state and
first-bad-batch bookkeeping: what `specnorm.functional.moments` and `combine_moments` compute, with the
same NaN/Inf counts and `nan_policy`. The values are float64 from the load on, so the statistics are the
float64 two-pass ones to rounding (1e-15 relative; the eager path centres in float32: about 1e-8).

Why: the eager path (`moments`, then `combine_moments`) takes about 60 small CUDA kernels per update. Here
the batch is read once by one kernel, and a second, tiny kernel does everything else, in place, without
reading a value on the host.

How (two launches per update, no other kernel):
 1. `tile_moments`: one program per tile, a `[RO, BI]` block of values that all belong to ONE statistic.
    The tile's values are loaded (float32/float16/bfloat16), converted to float64 and reduced two-pass in
    registers: count, mean, then the centred sum of squares M2. Squares of float32 values (up to 3.4e38)
    fit float64 (1.2e77), so no scaling is needed and the result is the float64 two-pass one at any finite
    magnitude. With `omit`, NaN/Inf values are left out of the tile's moments; otherwise they make them
    NaN (or Inf). Each tile also counts its NaN/Inf values. Partials go to a `[4, n_tiles]` float64 buffer.
 2. `fold_moments`: one program per statistic combines its tiles' partials, a chunk at a time (exact
    k-way combination: the chunk's mean from the weighted means, its M2 from the M2s plus the spread of
    the means), then folds the chunk into the statistic with Chan, Golub & LeVeque's pairwise update
    (Stanford STAN-CS-79-773, 1979), and folds the batch into the running state, in place. Program 0 also
    sums the NaN/Inf counts of every tile and updates the bookkeeping `[first bad batch or -1, its count,
    total]`. On a recorder's first batch the state buffers are `torch.empty` (no kernel) and the kernel
    does not read them (`fresh`).

Layout: a contiguous batch whose dims, once size-1 dims are dropped and neighbours of the same kind
merged, read `[I]`, `[K, I]` or `[O, K, I]` with `O` and `I` reduced and `K` kept: statistic `k` is the
runs `x[o, k, :]`, contiguous. `GLOBAL_AXES` (one statistic) and `CHANNEL_AXES` (one per frequency row of
`[B, C, F, T]`, C = 1 or reduced) are both such layouts. Other layouts, masks and integer or float64 data
take the eager path. Offsets are int64: a batch may hold more than 2**31 values.

Dispatch (`use_triton`): CUDA tensors, when triton imports and the environment variable `SPECNORM_TRITON`
is not "0". Triton is imported on the first CUDA batch only (`_kernels`), so `import specnorm` never
needs it; with `TRITON_INTERPRET=1` set before that import, the kernels run on CPU tensors (the tests).
"""

import contextlib
import functools
import math

import torch

from .kernels import kernels_on

__all__ = ["DTYPES", "fold_moments", "layout", "tile_moments", "update_moments", "use_triton"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # read exactly as float64 by the kernels
TILE = 4096  # values per tile of kernel 1 (float64 in registers: 16 per thread at 8 warps)
TILE_WARPS = 8
CHUNK = 2048  # partials per step of kernel 2's loops ([256, 1, 201, 401]: 5040 global tiles, 3 steps)


@functools.cache
def _kernels():
    "The jitted kernels, made on first use: triton is imported here only (it reads TRITON_INTERPRET then)."
    import triton
    import triton.language as tl

    @triton.jit
    def tile_kernel(
        x_ptr, part_ptr, n_tiles, n_stat, n_out, n_in, n_ib, tps, OMIT: tl.constexpr, RO: tl.constexpr, BI: tl.constexpr
    ):
        pid = tl.program_id(0)
        k = pid // tps  # the statistic; its tiles are partials [k * tps, (k + 1) * tps)
        t = pid % tps
        ro = (t // n_ib).to(tl.int64) * RO + tl.arange(0, RO)  # int64: a batch may hold 2**31 values or more
        ii = (t % n_ib).to(tl.int64) * BI + tl.arange(0, BI)
        inside = (ro < n_out)[:, None] & (ii < n_in)[None, :]
        offs = (ro[:, None] * n_stat + k) * n_in + ii[None, :]
        v = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float64)
        finite = tl.abs(v) < float("inf")  # False for NaN too
        nbad = tl.sum(tl.sum((inside & ~finite).to(tl.float64), axis=1), axis=0)
        if OMIT:
            keep = inside & finite
        else:
            keep = inside
        n = tl.sum(tl.sum(keep.to(tl.float64), axis=1), axis=0)
        mean = tl.sum(tl.sum(tl.where(keep, v, 0.0), axis=1), axis=0) / tl.maximum(n, 1.0)
        d = tl.where(keep, v - mean, 0.0)
        m2 = tl.sum(tl.sum(d * d, axis=1), axis=0)
        tl.store(part_ptr + pid, n)
        tl.store(part_ptr + n_tiles + pid, mean)
        tl.store(part_ptr + 2 * n_tiles + pid, m2)
        tl.store(part_ptr + 3 * n_tiles + pid, nbad)

    @triton.jit(do_not_specialize=["nbatch", "fresh"])
    def fold_kernel(part_ptr, n_tiles, tps, cnt_ptr, mean_ptr, m2_ptr, bad_ptr, nbatch, fresh, CHUNK: tl.constexpr):
        k = tl.program_id(0)
        base = k.to(tl.int64) * tps
        zero = tl.sum(tl.zeros([CHUNK], dtype=tl.float64), axis=0)  # a float64 scalar for the loop carries
        n, mean, m2, nbad = zero, zero, zero, zero
        for start in range(0, tps, CHUNK):
            j = start + tl.arange(0, CHUNK)
            inside = j < tps
            nj = tl.load(part_ptr + base + j, mask=inside, other=0.0)
            mj = tl.load(part_ptr + n_tiles + base + j, mask=inside, other=0.0)
            qj = tl.load(part_ptr + 2 * n_tiles + base + j, mask=inside, other=0.0)
            nbad += tl.sum(tl.load(part_ptr + 3 * n_tiles + base + j, mask=inside, other=0.0), axis=0)
            nc = tl.sum(nj, axis=0)
            mc = tl.sum(nj * mj, axis=0) / tl.maximum(nc, 1.0)
            dj = mj - mc
            qc = tl.sum(qj, axis=0) + tl.sum(nj * dj * dj, axis=0)
            tot = n + nc
            w = nc / tl.maximum(tot, 1.0)
            delta = mc - mean
            mean = mean + delta * w
            m2 = m2 + qc + delta * delta * n * w
            n = tot
        # the running state (count, mean, M2) of statistic k, in place; none yet on a recorder's first batch
        is_fresh = fresh != 0
        na = tl.where(is_fresh, 0.0, tl.load(cnt_ptr + k))
        ma = tl.where(is_fresh, 0.0, tl.load(mean_ptr + k))
        qa = tl.where(is_fresh, 0.0, tl.load(m2_ptr + k))
        tot = na + n
        w = n / tl.maximum(tot, 1.0)
        delta = mean - ma
        tl.store(cnt_ptr + k, tot)
        tl.store(mean_ptr + k, ma + delta * w)
        tl.store(m2_ptr + k, qa + m2 + delta * delta * na * w)
        if k == 0:  # the batch's NaN/Inf count (its own tiles', then the others'), and the bookkeeping
            total = nbad
            for start in range(tps, n_tiles, CHUNK):
                j = start + tl.arange(0, CHUNK)
                total += tl.sum(tl.load(part_ptr + 3 * n_tiles + j, mask=j < n_tiles, other=0.0), axis=0)
            nf = total.to(tl.int64)
            first = tl.where(is_fresh, -1, tl.load(bad_ptr))
            n_first = tl.where(is_fresh, 0, tl.load(bad_ptr + 1))
            seen = tl.where(is_fresh, 0, tl.load(bad_ptr + 2))
            now = (first < 0) & (nf > 0)
            tl.store(bad_ptr, tl.where(now, nbatch, first).to(tl.int64))
            tl.store(bad_ptr + 1, tl.where(now, nf, n_first).to(tl.int64))
            tl.store(bad_ptr + 2, (seen + nf).to(tl.int64))

    return tile_kernel, fold_kernel


@functools.cache
def _importable() -> bool:
    "Whether triton imports (asked once: a failed import is not retried on every batch)."
    try:
        _kernels()
    except ImportError:
        return False
    return True


def use_triton(x: torch.Tensor) -> bool:
    "Whether `x` takes the Triton kernels: a CUDA tensor, triton importable, and `SPECNORM_TRITON` not '0'."
    return kernels_on(x, "moments") and _importable()


def layout(shape, dims) -> tuple[int, int, int] | None:
    """`(O, K, I)` when a batch of `shape` reduced over `dims` reads as `[O, K, I]`, K kept; else None.

    Size-1 dims are dropped and neighbouring dims of the same kind (reduced or kept) merged; the kernels
    need the reduced values of each statistic in contiguous runs, so the result must end with a reduced
    group and hold at most one kept one.

    Example:
        >>> from specnorm.kernel_moments import layout
        >>> layout((64, 1, 201, 401), (0, 2, 3)), layout((64, 1, 201, 401), (0, 1, 3)), layout((8, 5), (0,))
        ((1, 1, 5158464), (64, 201, 401), None)
    """
    dims = {d % len(shape) for d in dims}
    groups = []  # [reduced?, size]
    for i, size in enumerate(shape):
        if size == 1:
            continue
        if groups and groups[-1][0] == (i in dims):
            groups[-1][1] *= size
        else:
            groups.append([i in dims, size])
    kinds = [g[0] for g in groups]
    sizes = [g[1] for g in groups]
    if kinds in ([], [True]):
        return 1, 1, math.prod(sizes)
    if kinds == [False, True]:
        return 1, sizes[0], sizes[1]
    if kinds == [True, False, True]:
        return tuple(sizes)
    return None


def _tiles(n_out, n_in):
    "Tile shape `(RO, BI)` (powers of two, RO * BI <= TILE), tiles along I, and tiles per statistic."
    bi = min(_next_pow2(n_in), TILE)
    ro = min(_next_pow2(n_out), TILE // bi)
    n_ib = -(-n_in // bi)
    return ro, bi, n_ib, -(-n_out // ro) * n_ib


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def tile_moments(x: torch.Tensor, lay: tuple[int, int, int], omit: bool = False) -> tuple[torch.Tensor, int]:
    """Kernel 1: per-tile float64 `(count, mean, M2, NaN/Inf count)` of a contiguous batch read as `lay`.

    Args:
        x: a contiguous float32, float16 or bfloat16 tensor (CUDA, or CPU under TRITON_INTERPRET=1).
        lay: `(O, K, I)` from `layout`.
        omit: leave NaN/Inf out of the moments (they are counted either way).

    Returns:
        `(partials, tps)`: a `[4, K * tps]` float64 tensor whose columns `[k * tps, (k + 1) * tps)` are
        statistic k's tiles, and `tps`, the tiles per statistic.

    Shape:
        `x`: any shape of `O * K * I` values.

    Example:
        >>> import torch
        >>> from specnorm.kernel_moments import tile_moments
        >>> x = torch.randn(64, 201, 401, device="cuda")  # doctest: +SKIP
        >>> partials, tps = tile_moments(x, (64, 201, 401))  # doctest: +SKIP
        >>> partials.shape, tps  # doctest: +SKIP
        (torch.Size([4, 1608]), 8)
    """
    n_out, n_stat, n_in = lay
    if x.numel() != n_out * n_stat * n_in or not x.is_contiguous() or x.dtype not in DTYPES:
        raise ValueError(
            f"tile_moments needs a contiguous {'/'.join(str(d) for d in DTYPES)} tensor of"
            f" {n_out * n_stat * n_in} values (layout {lay}), got a {x.dtype} tensor of shape {tuple(x.shape)}"
        )
    tile_kernel, _ = _kernels()
    ro, bi, n_ib, tps = _tiles(n_out, n_in)
    n_tiles = n_stat * tps
    partials = torch.empty(4, n_tiles, dtype=torch.float64, device=x.device)
    tile_kernel[(n_tiles,)](
        x, partials, n_tiles, n_stat, n_out, n_in, n_ib, tps, OMIT=bool(omit), RO=ro, BI=bi, num_warps=TILE_WARPS
    )
    return partials, tps


def fold_moments(partials: torch.Tensor, tps: int, state, bad: torch.Tensor, nbatch: int, fresh: bool = False) -> None:
    """Kernel 2: fold `tile_moments`' partials into the running `state` and NaN/Inf bookkeeping `bad`, in place.

    Args:
        partials, tps: from `tile_moments`.
        state: `(count, mean, m2)`, contiguous float64 tensors of K values each, on `partials`' device.
        bad: contiguous int64 `[first batch with NaN/Inf or -1, its NaN/Inf count, NaN/Inf count of all
            batches]`.
        nbatch: the index of this batch (written to `bad[0]` if it is the first with NaN/Inf).
        fresh: the recorder's first batch: `state` and `bad` are not read, only written.

    Example:
        >>> import torch
        >>> from specnorm.kernel_moments import fold_moments, tile_moments
        >>> x = torch.randn(8, 4, 100, device="cuda")  # doctest: +SKIP
        >>> state = torch.empty(3, 4, dtype=torch.float64, device="cuda")  # doctest: +SKIP
        >>> bad = torch.empty(3, dtype=torch.long, device="cuda")  # doctest: +SKIP
        >>> fold_moments(*tile_moments(x, (8, 4, 100)), tuple(state), bad, nbatch=0, fresh=True)  # doctest: +SKIP
        >>> state[0].tolist(), bad.tolist()  # doctest: +SKIP
        ([800.0, 800.0, 800.0, 800.0], [-1, 0, 0])
    """
    _, fold_kernel = _kernels()
    count, mean, m2 = state
    n_tiles = partials.shape[1]
    fold_kernel[(count.numel(),)](partials, n_tiles, tps, count, mean, m2, bad, int(nbatch), int(fresh), CHUNK=CHUNK)


def update_moments(x, lay, state, bad, nbatch, omit, stat_shape):
    """Both kernels: fold batch `x` (read as `lay`) into `(state, bad)`; returns them (new on the first batch).

    `state` is None on a recorder's first batch: it is then made with `torch.empty` (no kernel) as
    three views of one `[3, *stat_shape]` buffer. Non-contiguous state tensors are copied once.
    """
    x = x.contiguous()
    if state is None:
        buf = torch.empty((3, *stat_shape), dtype=torch.float64, device=x.device)
        state, bad, fresh = tuple(buf), torch.empty(3, dtype=torch.int64, device=x.device), True
    else:
        state, bad, fresh = tuple(t.contiguous() for t in state), bad.contiguous(), False
    # triton launches on the current CUDA device: make it x's (a recorder on cuda:1 while cuda:0 is current)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        fold_moments(*tile_moments(x, lay, omit), state, bad, nbatch, fresh)
    return state, bad
