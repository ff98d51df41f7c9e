"""specnorm.functional: no fastai import, float64 references, and no host reads in any hot path, first call included."""

import math
import pickle
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import HostReadError, count_calls, no_host_reads
from fasttransform import Pipeline

import specnorm.functional as F
from specnorm.audio import AudioSpectrogram, AudioTensor
from specnorm.drift import NormDriftMonitor
from specnorm.instance import InstanceSpecNorm
from specnorm.normalize import AudioNormalize, CheckFinite, SpecNormalize
from specnorm.pcen import PCEN, TrainablePCEN
from specnorm.sliding import ShortTimeAudioNormalize, SlidingSpecNorm
from specnorm.spectrogram import AudioToSpec
from specnorm.stats import StatsRecorder


def test_importing_functional_does_not_import_fastai():
    code = (
        "import sys, specnorm.functional; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastai', 'fastcore', 'fasttransform')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- float64 references ------------------------------------------------------------------------------------


def two_pass(a, dims):
    "float64 numpy (count, mean, m2) over `dims`, kept with size 1."
    a = np.asarray(a, dtype=np.float64)
    mean = a.mean(dims, keepdims=True)
    return a.size // mean.size, mean, ((a - mean) ** 2).sum(dims, keepdims=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda g: torch.randn(5, 1, 6, 40, generator=g) * 20 - 50,  # dB-like
        lambda g: torch.randn(5, 1, 6, 40, generator=g) + 1e4,  # far from zero
        lambda g: torch.randn(5, 1, 6, 40, generator=g) * 1e19,  # squares beyond float32
        lambda g: torch.randn(5, 1, 6, 40, generator=g) * 1e37,  # values up to ~3e38
        lambda g: torch.randn(5, 1, 6, 40, generator=g) * 1e-39,  # denormals
        lambda g: torch.randn(5, 1, 6, 40, generator=g, dtype=torch.float64) * 1e150,
        lambda g: torch.randint(2**40, 2**40 + 6, (5, 1, 6, 40), generator=g),  # int64 beyond 2^24
    ],
    ids=["db", "offset", "1e19", "3e38", "denormal", "f64-1e150", "int64"],
)
@pytest.mark.parametrize("dims", [F.GLOBAL_AXES, F.CHANNEL_AXES])
def test_moments_match_float64_two_pass_at_any_magnitude(make, dims, device):
    x = make(torch.Generator().manual_seed(0)).to(device)
    (count, mean, m2), bad = F.moments(x, dims)
    n, ref_mean, ref_m2 = two_pass(x.cpu().numpy(), dims)
    assert int(bad) == 0 and torch.isfinite(m2).all() and (m2 > 0).all()
    assert (count.cpu().numpy() == n).all()
    scale = np.sqrt(ref_m2 / n)
    np.testing.assert_allclose(mean.cpu().numpy(), ref_mean, rtol=1e-6, atol=1e-6 * scale.max())
    np.testing.assert_allclose(m2.cpu().numpy(), ref_m2, rtol=1e-6)


def test_recorder_is_exact_on_huge_tiny_and_integer_data():
    # 13.3 / 13.11: +-1e19 gave std inf; 1e20..3e38 reported NaN/Inf that do not exist; int64 lost precision
    g = torch.Generator().manual_seed(1)
    for x in (
        torch.randn(4, 1, 3, 50, generator=g) * 1e19,
        torch.randn(4, 1, 3, 50, generator=g).sign() * 3e38,
        torch.where(torch.arange(50) < 12, -3e38, 3e38).expand(4, 1, 3, 50),  # x - mean overflows float32
        torch.randn(4, 1, 3, 50, generator=g, dtype=torch.float64) * 1e150,
        torch.randn(4, 1, 3, 50, generator=g) * 1e-40,
    ):
        rec = StatsRecorder(F.CHANNEL_AXES).update(x).update(x.flip(0))
        a = np.concatenate([x.double().numpy()] * 2)
        state = rec.state_dict()  # float64: exact; the float32 std of denormal data is itself a denormal
        np.testing.assert_allclose((state["m2"] / state["count"]).sqrt().numpy().ravel(), a.std((0, 1, 3)), rtol=1e-6)
        if a.std() < 3e38:  # the float32 `std` cannot hold 1e150; that of denormal data is a denormal
            np.testing.assert_allclose(
                rec.std.double().numpy().ravel(), a.std((0, 1, 3)), rtol=1e-6 if a.std() > 1e-37 else 1e-4
            )
    # float64 +-1e200: the variance (1e400) exceeds float64; no NaN/Inf is reported, reading names the cause
    rec = StatsRecorder().update(torch.randn(2, 1, 3, 4, generator=g, dtype=torch.float64) * 1e200)
    assert rec.omitted == 0 and int(rec._bad[2]) == 0
    with pytest.raises(ValueError, match="exceeds the float64 range"):
        rec.std
    big = torch.tensor([2**30 + 1, 2**30 + 3, 2**30 + 5, 2**30 + 7], dtype=torch.int64)[None, None, None]
    rec = StatsRecorder().update(big)
    assert rec.std.item() == pytest.approx(np.sqrt(5.0), rel=1e-7)  # float32 would give 2.83
    assert rec.state_dict()["mean"].item() == 2**30 + 4


@pytest.mark.parametrize("correction", [float("nan"), float("inf"), -1, True])
def test_recorder_correction_is_validated(correction):
    with pytest.raises(ValueError, match="correction must be a number >= 0"):
        StatsRecorder(correction=correction)


def test_combine_moments_equals_one_pass():
    x = torch.randn(3, 100, dtype=torch.float64) * 5 + 100
    parts = [F.moments(p, (1,))[0] for p in (x[:, :10], x[:, 10:13], x[:, 13:])]
    total = F.combine_moments(F.combine_moments(parts[0], parts[1]), parts[2])
    _, mean, m2 = two_pass(x.numpy(), (1,))
    np.testing.assert_allclose(total.mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(total.m2.numpy(), m2, rtol=1e-10)


def test_normalize_and_denormalize_against_float64():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 1, 5, 20, generator=g) * torch.linspace(2, 15, 5)[:, None] - 60
    _, mean, m2 = two_pass(x.numpy(), F.CHANNEL_AXES)
    std = np.sqrt(m2 / (3 * 20))
    y = F.normalize(x, torch.from_numpy(mean), torch.from_numpy(std))
    np.testing.assert_allclose(y.double().numpy(), (x.double().numpy() - mean) / std, atol=2e-5)
    back = F.denormalize(y, torch.from_numpy(mean), torch.from_numpy(std))
    np.testing.assert_allclose(back.numpy(), x.numpy(), atol=1e-4)
    # the floor: a constant channel maps to 0, an all-zero one is only centred
    assert F.normalize(torch.full((4,), -50.0), -50.0, 0.0).abs().max() == 0
    assert torch.equal(F.normalize(torch.zeros(4), 0.0, 0.0), torch.zeros(4))


@pytest.mark.parametrize(
    "shape, stats, layout, fused",
    [
        ((4, 1, 20, 70), (1, 1, 20, 1), "contiguous", True),  # per frequency row
        ((4, 2, 20, 70), (1, 2, 20, 1), "contiguous", True),  # per channel and row
        ((4, 2, 20, 30), (1, 2, 1, 1), "contiguous", True),  # per channel: runs of 20 x 30 values
        ((4, 1, 20, 30), (), "contiguous", True),  # one value
        ((0, 1, 20, 70), (1, 1, 20, 1), "contiguous", True),  # an empty batch
        ((20, 70), (20, 1), "contiguous", True),  # an item without batch dims
        ((4, 1, 20, 8), (1, 1, 20, 1), "contiguous", False),  # runs of 8 values: the multiply-add
        ((3, 5), (5,), "contiguous", False),  # one scale per value
        ((4, 2, 20, 70), (1, 2, 1, 70), "contiguous", False),  # dims that are not adjacent
        ((4, 1, 70, 20), (1, 1, 20, 1), "transposed", False),  # a view that is not contiguous
    ],
)
def test_affine_is_one_rounding_from_float64(shape, stats, layout, fused, device, monkeypatch):
    calls = count_calls(monkeypatch, torch, "batch_norm")
    if device.type == "cuda":  # the same fused layouts take the Triton kernel there (kernel_affine)
        from specnorm import kernel_affine

        count_calls(monkeypatch, kernel_affine, "affine", calls)
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(shape, generator=g) * 30 - 50).to(device)
    if layout == "transposed":
        x = x.transpose(-1, -2)
    scale = (torch.rand(stats, generator=g) * 4 + 0.01).to(device)
    shift = (torch.randn(stats, generator=g) * 10).to(device)
    with no_host_reads():
        y = F.affine(x, scale, shift)
    assert bool(calls) == fused  # the fused pass where it pays, the multiply-add elsewhere
    ref = x.double() * scale.double() + shift.double()
    assert y.shape == x.shape and y.dtype == x.dtype
    # within two float32 roundings of the exact value (a multiply-add, fused or not)
    tol = 2 * torch.finfo(torch.float32).eps * (x.double() * scale.double()).abs().add(shift.double().abs())
    assert ((y.double() - ref).abs() <= tol + 1e-30).all()
    # NaN and Inf go through to the output, where FiniteCheck finds them
    if x.numel():
        x[(0,) * x.ndim], x[(-1,) * x.ndim] = math.nan, math.inf
        y = F.affine(x, scale, shift)
        assert y[(0,) * x.ndim].isnan() and y[(-1,) * x.ndim].isinf()


def test_affine_broadcasts_statistics_of_two_shapes_on_every_device(device):
    x = torch.randn(2, 1, 20, 70, generator=torch.Generator().manual_seed(4)).to(device)
    scale, shift = torch.linspace(0.5, 2, 20).view(1, 1, 20, 1).to(device), torch.tensor(3.0, device=device)
    torch.testing.assert_close(F.affine(x, scale, shift), x * scale + shift)


def test_standardize_against_float64():
    x = torch.randn(3, 2, 400, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 0.2 + 0.1
    a = x.numpy()
    ref = (a - a.mean((-2, -1), keepdims=True)) / a.std((-2, -1), keepdims=True)
    np.testing.assert_allclose(F.standardize(x).numpy(), ref, rtol=1e-12, atol=1e-12)
    ref = (a - a.mean(-1, keepdims=True)) / a.std(-1, keepdims=True)
    np.testing.assert_allclose(F.standardize(x, (-1,)).numpy(), ref, rtol=1e-12, atol=1e-12)


def test_gaussian_kl_against_the_closed_form():
    mp, vp, mq, vq = 1.5, 2.0, -0.5, 0.5
    ref = np.log(np.sqrt(vq / vp)) + (vp + (mp - mq) ** 2) / (2 * vq) - 0.5
    assert F.gaussian_kl(torch.tensor(mp), torch.tensor(vp), torch.tensor(mq), torch.tensor(vq)).item() == (
        pytest.approx(ref, rel=1e-12)
    )


@pytest.mark.parametrize("eps", [float("nan"), -1.0, float("inf"), "a"])
def test_eps_is_validated_everywhere(eps):
    for make in (
        lambda: SpecNormalize(0.0, 1.0, eps=eps),
        lambda: AudioNormalize(eps=eps),
        lambda: InstanceSpecNorm(eps=eps),
        lambda: SlidingSpecNorm(eps=eps),
        lambda: F.sliding_norm(torch.zeros(1, 5), norm_vars=True, eps=eps),
    ):
        with pytest.raises(ValueError, match=f"eps must be a .*got {eps!r}"):
            make()
    # 0: no floor is meaningful for a std divided by, so the statistics-free ones need eps > 0
    with pytest.raises(ValueError, match="eps must be a finite number > 0, got 0"):
        F.sliding_norm(torch.zeros(1, 5), norm_vars=True, eps=0)


def test_axes_are_validated_and_red_dims_is_an_alias():
    with pytest.raises(ValueError, match=r"axes \(5,\): 5 is not a dim of a 4-dim tensor"):
        InstanceSpecNorm(axes=(5,))
    with pytest.raises(ValueError, match=r"axes \(0, 7\): 7 is not a dim"):
        SpecNormalize(axes=(0, 7))
    assert SpecNormalize(red_dims=F.CHANNEL_AXES).axes == F.CHANNEL_AXES
    assert StatsRecorder(axes=F.CHANNEL_AXES).red_dims == F.CHANNEL_AXES


def test_sliding_norm_on_integers_returns_floats():
    x = torch.arange(20).reshape(1, 20) * 3
    out = F.sliding_norm(x, window=5)
    assert out.is_floating_point()
    ref = F.sliding_norm(x.double(), window=5)
    np.testing.assert_allclose(out.numpy(), ref.numpy())


def test_sliding_norm_on_huge_values_is_not_reported_as_nan():
    # 13.16: +-3e38 gave "contains 0 NaN or Inf values". 1e36: finite in, finite out, nothing reported;
    # +-3e38: the float32 window sums overflow (documented), and the check says the outputs hold NaN or Inf
    x = torch.randn(1, 1, 4, 60, generator=torch.Generator().manual_seed(4)).sign()
    norm = SlidingSpecNorm(window=10)
    out = norm(AudioSpectrogram(x * 1e36)).as_subclass(torch.Tensor)
    norm.check()
    np.testing.assert_allclose(out.numpy() / 1e36, F.sliding_norm(x, window=10).numpy(), rtol=1e-5, atol=1e-5)
    assert not torch.isfinite(norm(AudioSpectrogram(x * 3e38))).all()
    with pytest.raises(ValueError, match="SlidingSpecNorm: 1 of the 1 batches .* held NaN or Inf outputs"):
        norm.check()


# -- FiniteCheck and the CheckFinite callback ------------------------------------------------------------


def test_finite_check_folds_across_many_batches_and_pickles():
    fc = F.FiniteCheck("T", fold_every=4)
    for i in range(11):
        fc.update(torch.full((2, i + 1), float("inf") if i in (6, 9) else 1.0))
    with pytest.raises(ValueError, match=r"T: 2 of the 11 batches .* batch 6 \(counting from 0\) of shape \(2, 7\)"):
        fc.check()
    fc.update(torch.tensor([float("nan")]))
    clone = pickle.loads(pickle.dumps(fc))  # pickled without its marks
    clone.check()
    with pytest.raises(ValueError, match="1 of the 1 batches"):
        fc.check()


def test_check_finite_callback_raises_at_the_end_of_an_epoch():
    norm, inst = SpecNormalize(-50.0, 10.0), InstanceSpecNorm()
    dl = SimpleNamespace(after_batch=Pipeline([norm, inst]))
    cb = CheckFinite()
    cb.learn = SimpleNamespace(dls=[dl, dl])
    x = torch.randn(2, 1, 4, 10)
    norm(AudioSpectrogram(x)), inst(AudioSpectrogram(x))
    cb.after_epoch()  # nothing bad: no error
    x[1, 0, 0, 0] = float("nan")
    inst(AudioSpectrogram(x))
    with pytest.raises(ValueError, match="InstanceSpecNorm: 1 of the 1 batches"):
        cb.after_validate()


# -- no host reads, from the first call ---------------------------------------------------------------------


# Test data is made on the CPU and copied without waiting for the device (non_blocking: no sync of its own),
# so that on CUDA the guard's sync debug mode sees only the code under test.
def spec(device, b=3, f=12, t=40, linear=False, **meta):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(b, 1, f, t, generator=g) if linear else torch.randn(b, 1, f, t, generator=g) * 15 - 50
    return AudioSpectrogram(x.to(device, non_blocking=True), sr=16000, hop_length=160, **meta)


def wave(device, b=2, n=1600):
    x = torch.randn(b, 1, n, generator=torch.Generator().manual_seed(6)) * 0.1
    return AudioTensor(x.to(device, non_blocking=True), sr=16000)


def per_row(**kw):
    return SpecNormalize(torch.linspace(-60, -40, 12), torch.full((12,), 9.0), axes=F.CHANNEL_AXES, **kw)


# name: (build(device) run outside the guard, hot(obj, device) run inside it, twice: the first call and the next)
HOT_PATHS = {
    "SpecNormalize global": (lambda d: SpecNormalize(-50.0, 15.0), lambda t, d: t(spec(d))),
    "SpecNormalize per row": (lambda d: per_row(), lambda t, d: t(spec(d))),
    "SpecNormalize decode": (lambda d: per_row(), lambda t, d: t.decode(spec(d))),
    "InstanceSpecNorm": (lambda d: InstanceSpecNorm(), lambda t, d: t(spec(d))),
    "InstanceSpecNorm lengths": (
        lambda d: InstanceSpecNorm(axes=(3,)),
        lambda t, d: t(spec(d, lengths=torch.tensor([40, 30, 7]))),
    ),
    "SlidingSpecNorm": (lambda d: SlidingSpecNorm(window=17), lambda t, d: t(spec(d, t=41))),
    "SlidingSpecNorm norm_vars causal": (
        lambda d: SlidingSpecNorm(13, center=False, norm_vars=True, min_window=5),
        lambda t, d: t(spec(d, t=43)),
    ),
    "PCEN": (lambda d: PCEN(), lambda t, d: t(spec(d, linear=True, to_db=False))),
    "PCEN max_size": (lambda d: PCEN(max_size=3), lambda t, d: t(spec(d, linear=True, to_db=False))),
    "TrainablePCEN": (
        lambda d: TrainablePCEN(12).to(d),
        lambda t, d: t(spec(d, linear=True).as_subclass(torch.Tensor)),
    ),
    "AudioNormalize": (lambda d: AudioNormalize(), lambda t, d: t(wave(d))),
    "ShortTimeAudioNormalize": (lambda d: ShortTimeAudioNormalize(0.01), lambda t, d: t(wave(d, n=1601))),
    "ShortTimeAudioNormalize hop": (
        lambda d: ShortTimeAudioNormalize(0.02, hop_s=0.004),
        lambda t, d: t(wave(d, n=1603)),
    ),
    "AudioToSpec": (lambda d: AudioToSpec(n_fft=128, hop_length=64), lambda t, d: t(wave(d))),
    "AudioToSpec mel dB": (
        lambda d: AudioToSpec(mel=True, sample_rate=16000, n_fft=256, n_mels=16),
        lambda t, d: t(wave(d)),
    ),
    "StatsRecorder": (lambda d: StatsRecorder(F.CHANNEL_AXES), lambda r, d: r.update(spec(d)).update(spec(d, t=9))),
    "StatsRecorder mask": (
        lambda d: StatsRecorder(),
        lambda r, d: r.update(spec(d), mask=spec(d).as_subclass(torch.Tensor) > -50),
    ),
    "StatsRecorder omit": (lambda d: StatsRecorder(nan_policy="omit"), lambda r, d: r.update(spec(d))),
    "StatsRecorder int64": (
        lambda d: StatsRecorder(),
        lambda r, d: r.update(torch.arange(60, device=d).view(1, 1, 6, 10)),
    ),
    "drift monitor update": (
        lambda d: NormDriftMonitor(warn=False).reset(SpecNormalize(-50.0, 15.0)),
        lambda m, d: m.update(spec(d)),
    ),
    "functional": (
        lambda d: None,
        lambda _, d: [
            f(spec(d).as_subclass(torch.Tensor))
            for f in (
                lambda x: F.normalize(x, -50.0, 15.0),
                lambda x: F.denormalize(x, torch.zeros(1, 1, 12, 1), torch.ones(1, 1, 12, 1)),
                lambda x: F.instance_norm(x),
                lambda x: F.sliding_norm(x, 5),
                lambda x: F.pcen(x.abs()),
                lambda x: F.short_time_rms(x, 7, 3),
                lambda x: F.standardize(x),
                lambda x: F.moments(x, F.GLOBAL_AXES),
                lambda x: F.combine_moments(F.moments(x, (0,))[0], F.moments(x, (0,))[0]),
                lambda x: F.gaussian_kl(x, x.abs(), x, x.abs()),
            )
        ],
    ),
}


@pytest.mark.parametrize("name", list(HOT_PATHS))
def test_hot_paths_never_read_values_on_the_host(name, device):
    build, hot = HOT_PATHS[name]
    obj = build(device)
    with no_host_reads():
        for _ in range(2):  # the first call (caches, device copies) and a steady-state one
            hot(obj, device)


def test_the_guard_sees_a_host_read_in_a_check():
    norm = SpecNormalize(-50.0, 15.0)
    with no_host_reads():
        norm(spec("cpu"))
        with pytest.raises(HostReadError):
            norm.check()  # the check is where the one host read happens, by design


@pytest.mark.parametrize("reduction", ["minmax", "sum"])
def test_finite_check_reductions_find_nan_and_inf_and_say_what_they_found(reduction):
    fc = F.FiniteCheck("T", reduction=reduction)
    fc.update(torch.full((1000,), 1e3))  # finite, far from overflow: fine either way
    fc.update(torch.tensor([1.0, float("inf"), float("-inf")]))  # +inf and -inf: a sum gives NaN, still caught
    fc.update(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match=r"T: 2 of the 3 batches .*; the first is batch 1 .* of shape \(3,\)") as e:
        fc.check()
    assert ("sum overflows" in str(e.value)) == (reduction == "sum")
    big = torch.full((1000,), 1e36)  # finite values whose float32 sum overflows: only the sum reports them
    fc.update(big)
    if reduction == "sum":
        with pytest.raises(ValueError, match="sum overflows float32"):
            fc.check()
    else:
        fc.check()
    with pytest.raises(ValueError, match="reduction"):
        F.FiniteCheck("T", reduction="norm")
