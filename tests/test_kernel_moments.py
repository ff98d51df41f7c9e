"""The Triton kernels of `StatsRecorder.update` (specnorm.kernel_moments) against a float64 two-pass.

Without CUDA the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), on small
shapes; on a GPU machine the same tests run them compiled, and the public path runs on the `device` fixture.
"""

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import count_calls, no_host_reads

from specnorm import kernel_moments as km
from specnorm.functional import CHANNEL_AXES, GLOBAL_AXES
from specnorm.stats import StatsRecorder

pytest.importorskip("triton")

# Where the launchers run: compiled on CUDA when present, else interpreted on the CPU (TRITON_INTERPRET=1)
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(x, dims, omit=False):
    "Float64 two-pass (numpy) `(count, mean, m2)` over `dims`, kept with size 1; NaN/Inf left out with `omit`."
    a = x.double().cpu().numpy()
    keep = np.isfinite(a) if omit else np.ones(a.shape, bool)
    n = keep.sum(dims, keepdims=True).astype(np.float64)
    mean = np.where(keep, a, 0).sum(dims, keepdims=True) / np.maximum(n, 1)
    m2 = (np.where(keep, a - mean, 0) ** 2).sum(dims, keepdims=True)
    return n, mean, m2


def assert_moments(state, ref, scale, tol=1e-9):
    "Counts equal, means within `tol * scale`, M2 within `tol` relative (the kernels: float64 throughout)."
    count, mean, m2 = (t.cpu().numpy().reshape(r.shape) for t, r in zip(state, ref))
    np.testing.assert_array_equal(count, ref[0])
    np.testing.assert_allclose(mean, ref[1], rtol=0, atol=tol * scale)
    np.testing.assert_allclose(m2, ref[2], rtol=tol, atol=0)


def kernel_update(x, dims, state=None, bad=None, nbatch=0, omit=False):
    "Both kernels on `x` (on KERNEL_DEVICE), as `StatsRecorder.update` calls them."
    dims = tuple(d % x.ndim for d in dims)
    lay = km.layout(x.shape, dims)
    assert lay is not None
    shape = tuple(1 if i in dims else n for i, n in enumerate(x.shape))
    return km.update_moments(x, lay, state, bad, nbatch, omit, shape)


def data(shape, scale, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if scale >= 1e38:  # uniform over +-scale: the largest float32 magnitudes, whose float32 sums overflow
        x = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * scale
    else:
        x = (torch.randn(shape, generator=g, dtype=torch.float64) + 0.3) * scale
    return x.to(KERNEL_DEVICE, dtype)


@pytest.mark.parametrize(
    "shape, dims, lay",
    [
        ((64, 1, 201, 401), GLOBAL_AXES, (1, 1, 64 * 201 * 401)),
        ((64, 1, 201, 401), CHANNEL_AXES, (64, 201, 401)),
        ((64, 3, 201, 401), CHANNEL_AXES, (64 * 3, 201, 401)),
        ((1, 1, 1, 1), GLOBAL_AXES, (1, 1, 1)),
        ((5, 7), (1,), (1, 5, 7)),
        ((5, 7), (-1,), (1, 5, 7)),
        ((5, 7), (0,), None),  # a statistic's values are 7 apart: the eager path
        ((4, 2, 3, 5), (0, 2), None),  # two kept groups
        ((4, 2, 3, 5), (1, 2), None),
        ((4, 2, 1, 5), (0, 2, 3), (4, 2, 5)),  # size-1 dims do not count
    ],
)
def test_layout(shape, dims, lay):
    assert km.layout(shape, dims) == lay


@pytest.mark.parametrize("scale", [1.0, 1e19, 3e38])
@pytest.mark.parametrize(
    "shape, dims",
    [
        ((3, 1, 5, 7), GLOBAL_AXES),
        ((3, 1, 5, 7), CHANNEL_AXES),
        ((1, 1, 3, 2500), CHANNEL_AXES),  # a batch of 1, rows longer than one tile (ragged second tile)
        ((9, 1, 2, 300), CHANNEL_AXES),  # several rows per tile, ragged in rows and values
        ((1, 1, 1, 1), GLOBAL_AXES),  # one value
        ((2, 3, 4, 5), (0, 1, 3)),  # channels reduced too
        ((2, 3000), (1,)),
    ],
)
def test_kernels_match_float64_two_pass(shape, dims, scale):
    x = data(shape, scale)
    state, bad = kernel_update(x, dims)
    assert_moments(state, reference(x, dims), scale)
    assert bad.tolist() == [-1, 0, 0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_read_exactly(dtype):
    x = data((4, 1, 3, 50), 10.0, dtype=dtype)
    state, _ = kernel_update(x, CHANNEL_AXES)
    assert_moments(state, reference(x, CHANNEL_AXES), 10.0)


def test_many_tiles_and_chunks(monkeypatch):
    "Tiny tiles and chunks: kernel 2 loops over several chunks of partials per statistic and for the NaN count."
    monkeypatch.setattr(km, "TILE", 16)
    monkeypatch.setattr(km, "CHUNK", 4)
    x = data((7, 1, 3, 45), 1e19)
    x[3, 0, 1, 7], x[6, 0, 0, 44] = float("nan"), float("inf")  # in program 0's statistic, and in another's
    for dims in (GLOBAL_AXES, CHANNEL_AXES):
        state, bad = kernel_update(x, dims, omit=True)
        assert_moments(state, reference(x, dims, omit=True), 1e19)
        assert bad.tolist() == [0, 2, 2]


@pytest.mark.parametrize("dims", [GLOBAL_AXES, CHANNEL_AXES])
def test_nonfinite_counted_and_policies(dims):
    x = data((3, 1, 4, 33), 2.0)
    x[0, 0, 1, 3], x[2, 0, 1, 30], x[1, 0, 3, 0] = float("nan"), float("inf"), -float("inf")
    omitted, bad = kernel_update(x, dims, omit=True)
    assert_moments(omitted, reference(x, dims, omit=True), 2.0)
    assert bad.tolist() == [0, 3, 3]
    kept, bad = kernel_update(x, dims, omit=False)
    assert bad.tolist() == [0, 3, 3]
    ref = reference(x, dims)  # NaN where a statistic holds a NaN/Inf, as the eager path
    np.testing.assert_array_equal(np.isfinite(kept[1].cpu().numpy().reshape(ref[1].shape)), np.isfinite(ref[1]))
    np.testing.assert_array_equal(kept[0].cpu().numpy().reshape(ref[0].shape), ref[0])


def test_all_values_omitted():
    x = torch.full((2, 1, 2, 5), float("nan"), device=KERNEL_DEVICE)
    x[:, :, 1] = 4.0
    (count, mean, m2), bad = kernel_update(x, CHANNEL_AXES, omit=True)
    assert count.flatten().tolist() == [0.0, 10.0] and mean.flatten().tolist() == [0.0, 4.0]
    assert m2.flatten().tolist() == [0.0, 0.0] and bad.tolist() == [0, 10, 10]


def test_updates_fold_into_running_state_and_first_bad_batch():
    "Several batches of different lengths and sizes: the running state is the float64 two-pass of all of them."
    dims = CHANNEL_AXES
    batches = [data((n, 1, 3, t), 1e19, seed=n) for n, t in ((2, 40), (1, 7), (5, 61), (3, 40))]
    batches[2][4, 0, 2, 60] = float("inf")
    state = bad = None
    for i, x in enumerate(batches):
        state, bad = kernel_update(x, dims, state, bad, nbatch=i, omit=True)
        assert bad.tolist() == ([-1, 0, 0] if i < 2 else [2, 1, 1])
    rows = torch.cat([x.movedim(2, 0).reshape(3, -1) for x in batches], dim=1)  # [freq, all its values]
    assert_moments(state, reference(rows, (1,), omit=True), 1e19)


@pytest.fixture
def forced(monkeypatch):
    "StatsRecorder takes the kernel path on KERNEL_DEVICE, CPU too (interpreted): the public path, end to end."
    monkeypatch.setattr(km, "use_triton", lambda x: True)
    calls, update = [], km.update_moments

    def counted(*args):
        calls.append(args[0].shape)
        return update(*args)

    monkeypatch.setattr(km, "update_moments", counted)
    return calls


@pytest.mark.parametrize("dims", [GLOBAL_AXES, CHANNEL_AXES])
def test_recorder_kernel_path_equals_eager(forced, dims, tmp_path, monkeypatch):
    batches = [data((n, 1, 4, t), 1e19, seed=n) for n, t in ((3, 30), (2, 11), (4, 30))]
    rec = StatsRecorder(dims, correction=1)
    for x in batches:
        rec.update(x)
    assert len(forced) == 3
    monkeypatch.setattr(km, "use_triton", lambda x: False)
    eager = StatsRecorder(dims, correction=1)
    for x in batches:
        eager.update(x)
    for name in ("count", "mean", "std", "var"):
        torch.testing.assert_close(getattr(rec, name), getattr(eager, name), rtol=1e-6, atol=0)
    assert (rec.nbatches, rec.nobservations, rec.batch_shape) == (eager.nbatches, eager.nobservations, (3, 1, 4, 30))
    # merge, masked batch (eager) after kernel ones, save and load keep working on the kernel-made state
    both = rec + eager
    torch.testing.assert_close(both.count, 2 * eager.count)
    rec.update(batches[0], mask=torch.ones_like(batches[0], dtype=torch.bool))
    eager.update(batches[0])
    torch.testing.assert_close(rec.std, eager.std, rtol=1e-6, atol=0)
    path = rec.save(tmp_path / "s.safetensors")
    torch.testing.assert_close(StatsRecorder.load(path).mean, eager.mean.cpu(), rtol=1e-6, atol=0)
    after = copy.deepcopy(eager).update(batches[1])  # eager: batches 0, 1, 2, 0, 1
    # the kernels fold into a state the eager path made (a masked first batch), and into a loaded one
    monkeypatch.setattr(km, "use_triton", lambda x: True)
    mixed = StatsRecorder(dims, correction=1).update(batches[0], mask=torch.ones_like(batches[0], dtype=torch.bool))
    for x in batches[1:] + batches[:1]:
        mixed.update(x)
    torch.testing.assert_close(mixed.std, eager.std, rtol=1e-6, atol=0)
    loaded = StatsRecorder.load(path, device=KERNEL_DEVICE).update(batches[1])
    torch.testing.assert_close(loaded.std, after.std, rtol=1e-6, atol=0)
    assert loaded.nbatches == 5 and loaded._bad.tolist() == [-1, 0, 0]
    assert len(forced) == 3 + 3 + 1  # every unmasked batch took the kernels


def test_recorder_kernel_path_nan_policy(forced):
    clean, dirty = data((2, 1, 3, 20), 1.0), data((2, 1, 3, 20), 1.0, seed=1)
    dirty[1, 0, 2, 5] = float("nan")
    rec = StatsRecorder(CHANNEL_AXES)
    rec.update(clean).update(dirty).update(dirty)
    with pytest.raises(ValueError, match=r"batch 1 \(counting from 0\) holds 1 NaN or Inf values \(2 in the 3"):
        _ = rec.mean
    rec = StatsRecorder(CHANNEL_AXES, nan_policy="omit").update(clean).update(dirty)
    assert len(forced) == 5 and rec.omitted == 1 and rec.count.flatten().tolist() == [80, 80, 79]


def test_kill_switch_and_cpu(device, monkeypatch):
    x = torch.zeros(2, 3, device=device)
    assert km.use_triton(x) == (x.is_cuda)
    monkeypatch.setenv("SPECNORM_TRITON", "0")
    assert not km.use_triton(x)


@pytest.mark.parametrize("dims", [GLOBAL_AXES, CHANNEL_AXES])
@pytest.mark.parametrize("policy", ["raise", "omit"])
def test_public_recorder_on_device(device, dims, policy, monkeypatch):
    "The public path on each device (the kernels on CUDA), from the first call on, reading no value on the host."
    batches = [data((n, 1, 5, t), 3e38, seed=n).to(device) for n, t in ((4, 33), (1, 33), (3, 2))]
    calls = count_calls(monkeypatch, km, "update_moments")
    rec = StatsRecorder(dims, nan_policy=policy)
    with no_host_reads():
        for x in batches:
            rec.update(x)
    assert len(calls) == (3 if torch.device(device).type == "cuda" else 0)
    rows = torch.cat([x.cpu().movedim(2, 0).reshape(5, -1) for x in batches], dim=1)  # [freq, all its values]
    ref = reference(rows, (1,) if dims == CHANNEL_AXES else (0, 1))
    assert_moments(rec._state, ref, 3e38, tol=1e-6)  # the eager CPU path centres in float32: 1e-9 relative
    assert rec.std.isfinite().all() and rec.mean.device.type == torch.device(device).type


_COMPILE = """
from triton import compile
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from specnorm.kernel_moments import CHUNK, TILE as TILE_SIZE, TILE_WARPS, _kernels

tile, fold = _kernels()
hopper = GPUTarget("cuda", 90, 32)
TILE = dict(x_ptr="*fp32", part_ptr="*fp64", n_tiles="i32", n_stat="i32", n_out="i32", n_in="i64", n_ib="i32",
            tps="i32", OMIT="constexpr", RO="constexpr", BI="constexpr")
FOLD = dict(part_ptr="*fp64", n_tiles="i32", tps="i32", cnt_ptr="*fp64", mean_ptr="*fp64", m2_ptr="*fp64",
            bad_ptr="*i64", nbatch="i32", fresh="i32", CHUNK="constexpr")
warps = dict(num_warps=TILE_WARPS)
for x in ("*fp32", "*fp16", "*bf16"):
    for omit in (False, True):
        for ro, bi in ((8, 512), (1, TILE_SIZE)):  # per frequency row of [64, 1, 201, 401], global
            compile(ASTSource(tile, dict(TILE, x_ptr=x), dict(OMIT=omit, RO=ro, BI=bi)), target=hopper, options=warps)
ones = ("n_tiles", "n_stat", "n_out", "n_in", "n_ib", "tps")  # triton specialises ints equal to 1
sig = dict(TILE, **dict.fromkeys(ones, "constexpr"))
compile(ASTSource(tile, sig, dict(dict.fromkeys(ones, 1), OMIT=True, RO=1, BI=1)), target=hopper, options=warps)
compile(ASTSource(fold, FOLD, dict(CHUNK=CHUNK)), target=hopper)
sig = dict(FOLD, n_tiles="constexpr", tps="constexpr")
compile(ASTSource(fold, sig, dict(n_tiles=1, tps=1, CHUNK=CHUNK)), target=hopper)
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_hopper():
    """The kernels compile to a cubin for sm_90 (H100/H200) on a machine without a GPU too: no type errors
    that the interpreter lets through. In a fresh process: triton imported in interpreter mode cannot compile."""
    pytest.importorskip("triton")
    from triton.backends import backends

    if "nvidia" not in backends:
        pytest.skip("this triton build has no CUDA backend")
    if torch.cuda.is_available():  # (and the compiler API this uses may differ in that machine's triton)
        pytest.skip("with CUDA the other tests compile and run the kernels")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


def test_benchmark_smoke(device):
    "benchmarks/gpu_kernels.py's rows in smoke mode (timings are never asserted): the triton path on CUDA."
    from benchmarks.gpu_kernels import bench_moments

    rows = bench_moments(device, smoke=True)
    assert all(len(r) == 3 and float(r[1]) > 0 for r in rows)
    kernels = [int(m[1]) for r in rows if (m := re.search(r", triton, (\d+) kernels", r[0]))]
    assert len(kernels) == (2 if torch.device(device).type == "cuda" else 0)
    assert all(n <= 8 for n in kernels)  # the goal; kernel_moments launches 2 per update
