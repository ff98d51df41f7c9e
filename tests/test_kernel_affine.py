"""The Triton kernels of `specnorm.kernel_affine`, against float64 references.

The launchers run here on CPU tensors under Triton's interpreter (tests/conftest.py sets `TRITON_INTERPRET=1`
without CUDA) and compiled on CUDA tensors on a GPU machine; the public paths (`SpecNormalize`,
`functional.instance_norm`) run on the `device` fixture, so on a GPU machine they test the kernels as users
call them.
"""

import math

import pytest
import torch
from conftest import no_host_reads

import specnorm.functional as F
from specnorm.audio import AudioSpectrogram
from specnorm.normalize import SpecNormalize

triton = pytest.importorskip("triton")
K = pytest.importorskip("specnorm.kernel_affine")

EPS32 = torch.finfo(torch.float32).eps
# the launchers run here: compiled on CUDA when there is one, else interpreted on the CPU (small sizes)
KERNEL_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# [B, C, F, T] batches: ragged (no size a multiple of a block), tiny, a batch of one, runs longer than a tile row
SHAPES = [(3, 1, 7, 37), (1, 1, 1, 1), (1, 2, 5, 3), (2, 1, 3, 1500), (5, 3, 2, 17)]


def data(shape, seed=0, dtype=torch.float32, device=KERNEL_DEVICE):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 12 - 50).to(device=device, dtype=dtype)


def assert_one_rounding(y, ref, *terms):
    "`y` within one float32 rounding of each term of the float64 `ref` (with or without a fused multiply-add)."
    bound = EPS32 * sum(t.abs() for t in terms) + EPS32 * ref.abs() + 1e-30
    err = (y.double() - ref).abs()
    assert (err <= bound).all(), f"max error {(err / bound).max().item():.3g} roundings"


def statistics(shape, layout, seed=1):
    "scale and shift of the statistic shape of `layout` ('global', 'row', 'channel', 'value') for `shape`."
    _, c, f, t = shape
    size = {"global": (1, 1, 1, 1), "row": (1, 1, f, 1), "channel": (1, c, 1, 1), "value": (1, c, f, t)}[layout]
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(size, generator=g) + 0.05) * 0.2, torch.randn(size, generator=g) * 5


# -- the affine kernel ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["global", "row", "channel", "value"])
def test_affine_matches_float64(shape, layout):
    x = data(shape)
    scale, shift = (v.to(KERNEL_DEVICE) for v in statistics(shape, layout))
    count = torch.zeros(1, dtype=torch.float64, device=KERNEL_DEVICE)
    y = K.affine(x, scale, shift, count)
    ref = x.double() * scale.double() + shift.double()
    assert y.shape == x.shape and y.dtype == x.dtype
    assert_one_rounding(y, ref, x.double() * scale.double())
    assert count.item() == 0  # finite outputs: nothing counted


@pytest.mark.parametrize("shape", SHAPES)
def test_affine_with_numbers_is_the_flat_kernel(shape):
    x = data(shape)
    y = K.affine(x, 0.125, 6.25)
    assert_one_rounding(y, x.double() * 0.125 + 6.25, x.double() * 0.125)


def test_affine_keeps_float64():
    x = data((2, 1, 3, 20), dtype=torch.float64)
    scale, shift = (v.double().to(KERNEL_DEVICE) for v in statistics(x.shape, "row"))
    y = K.affine(x, scale, shift)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, x * scale + shift, rtol=1e-15, atol=1e-13)


@pytest.mark.parametrize("layout", ["global", "row", "number"])
def test_affine_counts_nan_and_inf_of_its_output(layout):
    shape = (3, 1, 7, 37)
    x = data(shape)
    # NaN, +Inf, -Inf in the input; the first and the last value (edges of the ragged tiles)
    flat = x.view(-1)
    flat[0], flat[100], flat[500], flat[-1] = math.nan, math.inf, -math.inf, math.nan
    if layout == "number":
        scale, shift = 0.5, 3.0
    else:
        scale, shift = (v.to(KERNEL_DEVICE) for v in statistics(shape, layout))
    count = torch.zeros(1, dtype=torch.float64, device=KERNEL_DEVICE)
    y = K.affine(x, scale, shift, count)
    assert count.item() == 4 == (~torch.isfinite(y)).sum().item()
    K.affine(x, scale, shift, count)  # adds into the cell: it is never reset by the kernel
    assert count.item() == 8


def test_affine_counts_finite_values_that_overflow():
    x = torch.full((2, 1, 3, 20), 3e38, device=KERNEL_DEVICE)
    count = torch.zeros(1, dtype=torch.float64, device=KERNEL_DEVICE)
    K.affine(x, 4.0, 0.0, count)  # 1.2e39 is Inf in float32
    assert count.item() == x.numel()


def test_affine_refuses_layouts_it_does_not_fuse():
    x = data((2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"\(1, 3, 1, 5\)"):  # statistics over dims that are not adjacent
        K.affine(x, torch.ones(1, 3, 1, 5), torch.zeros(1, 3, 1, 5))
    with pytest.raises(ValueError, match="contiguous"):
        K.affine(x.transpose(2, 3), 1.0, 0.0)


def test_affine_layout_views():
    x = torch.zeros(4, 2, 6, 9)
    assert F.affine_layout(x, (1, 2, 1, 1)) == (4, 2, 54)
    assert F.affine_layout(x, (1, 2, 6, 1)) == (4, 12, 9)
    assert F.affine_layout(x, ()) == (4, 1, 108)
    assert F.affine_layout(x, (1, 2, 1, 9)) is None  # the statistics vary over dims 1 and 3, not adjacent
    assert F.affine_layout(x, (1, 3, 1, 1)) is None  # sizes that do not match the batch
    assert F.affine_layout(x.transpose(2, 3), (1, 2, 1, 1)) is None


# -- FiniteCheck's count cells ------------------------------------------------------------------------------
def test_count_cells_mark_batches_with_the_kernel():
    fc = F.FiniteCheck("SpecNormalize", fold_every=2)
    good, bad = data((2, 1, 3, 20)), data((2, 1, 3, 20))
    bad[1, 0, 2, 7] = math.nan
    K.affine(good, 1.0, 0.0, fc.count_cell(good))  # batch 0
    fc.update(good)  # batch 1: the reduction path, in the same buffer
    K.affine(bad[:1], 1.0, 0.0, fc.count_cell(bad[:1]))  # batch 2, after a fold: finite
    K.affine(bad, 1.0, 0.0, fc.count_cell(bad))  # batch 3: one NaN
    K.affine(good, 1.0, 0.0, fc.count_cell(good))  # batch 4, after a fold: its cell was zeroed
    with pytest.raises(ValueError) as e:
        fc.check()
    assert str(e.value) == (
        "SpecNormalize: 1 of the 5 batches since the last check held NaN or Inf outputs; "
        "the first is batch 3 (counting from 0) of shape (2, 1, 3, 20)"
    )
    K.affine(good, 1.0, 0.0, fc.count_cell(good))  # check() started over
    fc.check()


def test_count_cells_cost_no_kernel_and_no_host_read():
    fc = F.FiniteCheck("T")
    x = data((2, 3))
    cell = fc.count_cell(x)
    assert cell.shape == (1,) and cell.dtype == torch.float64 and cell.device == x.device
    assert cell.item() == 0 and fc.nbatches == 1 and fc.shape_of(0) == (2, 3)
    with no_host_reads():
        fc.count_cell(x)


# -- SpecNormalize on the device: the kernel on CUDA, the eager path elsewhere --------------------------------
@pytest.mark.parametrize("axes", [F.GLOBAL_AXES, F.CHANNEL_AXES])
def test_spec_normalize_matches_float64_and_checks(device, axes):
    shape = (4, 1, 9, 40)
    mean = -50.0 if axes == F.GLOBAL_AXES else torch.linspace(-60, -40, shape[2])
    std = 12.0 if axes == F.GLOBAL_AXES else torch.linspace(5, 15, shape[2])
    norm = SpecNormalize(mean, std, axes=axes)
    xs = [data(shape, seed, device=device) for seed in range(3)]
    xs[1][2, 0, 4, 39] = math.inf
    with no_host_reads():
        ys = [norm(AudioSpectrogram(x, sr=16000)) for x in xs]
    m, s = (torch.as_tensor(v, dtype=torch.float64).reshape(-1, 1) for v in (mean, std))
    for x, y in zip(xs, ys):
        assert type(y) is AudioSpectrogram and y.sr == 16000 and y.device == x.device
        ref = (x.double() - m.to(device)) / s.to(device)
        finite = torch.isfinite(ref)
        assert_one_rounding(y[finite], ref[finite], x.double()[finite] / s.to(device).expand_as(x)[finite])
    assert torch.isinf(ys[1][2, 0, 4, 39])
    torch.testing.assert_close(norm.decode(ys[0]).as_subclass(torch.Tensor), xs[0], rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match=r"SpecNormalize: 1 of the 3 batches .* first is batch 1 .* \(4, 1, 9, 40\)"):
        norm.check()


def test_spec_normalize_item_is_marked_with_its_own_shape(device):
    norm = SpecNormalize(-50.0, 10.0)
    x = data((1, 9, 40), device=device)
    x[0, 3, 3] = math.nan
    norm(AudioSpectrogram(x, sr=16000))
    with pytest.raises(ValueError, match=r"first is batch 0 \(counting from 0\) of shape \(1, 9, 40\)"):
        norm.check()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the kill switch matters on CUDA only")
def test_kill_switch_takes_the_eager_path(monkeypatch):
    x = data((4, 1, 9, 40), device="cuda")
    norm = SpecNormalize(torch.linspace(-60, -40, 9), torch.linspace(5, 15, 9), axes=F.CHANNEL_AXES)
    fused = norm(AudioSpectrogram(x, sr=16000))
    monkeypatch.setenv("SPECNORM_TRITON", "0")
    assert not K.enabled(x)
    eager = norm(AudioSpectrogram(x, sr=16000))
    torch.testing.assert_close(fused.as_subclass(torch.Tensor), eager.as_subclass(torch.Tensor), rtol=1e-6, atol=1e-6)


def test_enabled_only_on_cuda(monkeypatch):
    assert not K.enabled(torch.zeros(3))
    if torch.cuda.is_available():
        assert K.enabled(torch.zeros(3, device="cuda"))
        monkeypatch.setenv("SPECNORM_TRITON", "0")
        assert not K.enabled(torch.zeros(3, device="cuda"))


# -- instance norm ------------------------------------------------------------------------------------------
def instance_reference(x, dims, eps):
    "Float64 two-pass: (x - mean) / max(std, eps)."
    xd = x.double()
    mean = xd.mean(dims, keepdim=True)
    std = (xd - mean).square().mean(dims, keepdim=True).sqrt()
    return (xd - mean) / std.clamp(min=eps), std


@pytest.mark.parametrize("shape", [(3, 2, 7, 37), (1, 1, 1, 1), (1, 1, 3, 1), (2, 1, 3, 1100), (1, 1, 1, 5000)])
@pytest.mark.parametrize("dims", [(3,), (2, 3), (1, 2, 3)])
def test_instance_kernels_match_float64(shape, dims):
    x = data(shape) + 1e4  # a large offset: sums that cancel would lose the variance
    y = K.instance_norm(x, dims, 1e-5)
    ref, _ = instance_reference(x, dims, 1e-5)
    assert y.shape == x.shape and y.dtype == x.dtype
    # within 1e-6 of float64 two-pass in units of std (float32 output: a few roundings of |y|)
    assert ((y.double() - ref).abs() <= 1e-6 + 4 * EPS32 * ref.abs()).all()


def test_instance_kernels_constant_groups_give_exact_zeros():
    x = torch.full((2, 2, 3, 1500), -37.3, device=KERNEL_DEVICE)
    x[1] = 1e6 / 3
    for dims in [(3,), (2, 3), (1, 2, 3)]:
        assert (K.instance_norm(x, dims, 1e-5) == 0).all()


def test_instance_kernels_floor_the_std_at_eps():
    x = data((2, 1, 4, 50))
    tiny = x * 1e-8 - 20  # std ~1.2e-7, below eps
    y = K.instance_norm(tiny, (2, 3), 1e-3)
    xd = tiny.double()
    ref = (xd - xd.mean((2, 3), keepdim=True)) / 1e-3
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-6)


def test_instance_kernels_keep_float64():
    x = data((2, 1, 4, 50), dtype=torch.float64)
    ref, _ = instance_reference(x, (2, 3), 1e-5)
    torch.testing.assert_close(K.instance_norm(x, (2, 3), 1e-5), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dims", [(3,), (2, 3)])
def test_instance_kernels_count_nan_and_inf_of_their_output(dims):
    x = data((3, 2, 7, 37))
    x[0, 1, 2, 5], x[2, 0, 6, 36] = math.nan, math.inf  # each poisons its group's statistics: the whole group
    count = torch.zeros(1, dtype=torch.float64, device=KERNEL_DEVICE)
    y = K.instance_norm(x, dims, 1e-5, count)
    bad = (~torch.isfinite(y)).sum().item()
    assert bad == 2 * math.prod(x.shape[d] for d in dims) and count.item() == bad
    good = K.instance_norm(data((3, 2, 7, 37)), dims, 1e-5, count)  # a finite batch adds nothing
    assert torch.isfinite(good).all() and count.item() == bad


def test_instance_kernels_give_nan_where_float32_squares_overflow():
    "A group of values near 1e20 gives NaN outputs, counted, not zeros; the group beside it stays exact."
    x = data((2, 1, 4, 50))
    x[1] *= 2e18
    count = torch.zeros(1, dtype=torch.float64, device=KERNEL_DEVICE)
    y = K.instance_norm(x, (2, 3), 1e-5, count)
    ref, _ = instance_reference(x[:1], (2, 3), 1e-5)
    assert torch.isnan(y[1]).all() and count.item() == y[1].numel()
    assert ((y[:1].double() - ref).abs() <= 1e-6 + 4 * EPS32 * ref.abs()).all()


def test_instance_layout_only_trailing_contiguous_dims():
    x = torch.zeros(4, 2, 8, 50)
    assert K.instance_layout(x, (1, 2, 3)) == (4, 800)
    assert K.instance_layout(x, (2,)) is None
    assert K.instance_layout(x.transpose(2, 3), (2, 3)) is None
    with pytest.raises(ValueError, match="trailing"):
        K.instance_norm(x, (1, 3), 1e-5)


@pytest.mark.parametrize("axes", [(3,), (2, 3), (1, 2, 3), (1, 3)])
def test_instance_norm_public_path(device, axes):
    x = data((3, 2, 9, 40), device=device)
    x[1] = 5.0  # a constant clip
    with no_host_reads():
        y = F.instance_norm(x, axes)
    ref, _ = instance_reference(x, axes, F.INSTANCE_EPS)
    assert ((y.double() - ref).abs() <= 1e-6 + 4 * EPS32 * ref.abs()).all()
    assert (y[1] == 0).all()
    item = F.instance_norm(x[0], axes)  # a [C, F, T] item: a batch of one
    assert ((item.double() - ref[0]).abs() <= 1e-6 + 4 * EPS32 * ref[0].abs()).all()
