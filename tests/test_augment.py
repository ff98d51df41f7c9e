"""Augmentations (augment_functional, augment_signal, augment_spectrogram) against independent references:
measured noise slopes, exact mask positions and fills, sample offsets, gains in dB, torchaudio's deltas."""

import warnings

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from conftest import no_host_reads
from scipy.signal import welch

from specnorm.all import (
    AddNoise,
    AddNoiseGPU,
    AudioSpectrogram,
    AudioTensor,
    AudioToSpec,
    ChangeVolume,
    ChangeVolumeGPU,
    CropTime,
    Delta,
    DeltaGPU,
    InstanceSpecNorm,
    MaskFreq,
    MaskFreqGPU,
    MaskTime,
    MaskTimeGPU,
    NoiseColor,
    ResizeSignal,
    SGRoll,
    SignalCutout,
    SignalCutoutGPU,
    SignalLoss,
    SignalLossGPU,
    SignalShifter,
    SlidingSpecNorm,
    SpecNormalize,
    TfmResize,
    TfmResizeGPU,
    colored_noise,
    mask_along_axis,
    mask_along_axis_,
    region_mask,
    shift_signal,
)


def _signal_batch(device, b=6, c=2, t=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.1, 2.0, b).view(b, 1, 1)
    return AudioTensor((torch.randn(b, c, t, generator=g) * scale).to(device), sr=8000)


def _spec_batch(device, b=6, c=2, f=40, t=60, seed=0, **meta):
    g = torch.Generator().manual_seed(seed)
    level = torch.linspace(-80, -20, f).view(1, 1, f, 1)
    x = level + 5 * torch.randn(b, c, f, t, generator=g)
    return AudioSpectrogram(x.to(device), sr=16000, hop_length=128, to_db=True, **meta)


@pytest.mark.parametrize("exponent", [NoiseColor.Violet, NoiseColor.Blue, NoiseColor.White, 0.5, 1, 2])
def test_colored_noise_has_the_spectral_slope_of_its_color(exponent):
    y = colored_noise([32, 2**14], exponent, generator=torch.Generator().manual_seed(0)).double().numpy()
    f, psd = welch(y, nperseg=1024, axis=-1)
    band = (f > 0.01) & (f < 0.4)
    slope = np.polyfit(np.log10(f[band]), np.log10(psd.mean(0)[band]), 1)[0]
    assert slope == pytest.approx(-exponent, abs=0.1)
    assert y.var() == pytest.approx(1.0, rel=0.1)


def test_region_mask_draws_size_then_start():
    torch.manual_seed(0)
    m = region_mask(500, 3, 7, 20)
    sizes = m.sum(1)
    assert sizes.min() >= 3 and sizes.max() <= 7
    # One contiguous run per row: exactly one rising edge.
    edges = torch.diff(torch.cat([torch.zeros(500, 1, dtype=torch.int8), m.to(torch.int8)], 1), dim=1)
    assert ((edges == 1).sum(1) == 1).all()


def test_mask_along_axis_fills_with_the_clip_mean_or_the_value():
    x = _spec_batch("cpu")
    torch.manual_seed(1)
    y = mask_along_axis(x.as_subclass(torch.Tensor), 2, 4, 4, axis=3)
    clip_mean = x.as_subclass(torch.Tensor).double().mean((-2, -1), keepdim=True).float()
    changed = (y != x.as_subclass(torch.Tensor)).all(-2, keepdim=True)  # frames masked for every row
    assert torch.allclose(torch.where(changed, y, clip_mean), clip_mean.expand_as(y), atol=1e-4)
    n_masked = changed.sum((-2, -1))[:, 0].flatten()
    assert ((n_masked >= 4) & (n_masked <= 8)).all()  # two bands of 4 frames, maybe overlapping
    z = x.as_subclass(torch.Tensor).clone()
    torch.manual_seed(1)
    mask_along_axis_(z, 2, 4, 4, mask_val=-1.0, axis=3)
    assert torch.equal(z == -1, torch.where(changed.expand_as(y), True, False))


def test_mask_freq_at_a_given_start_masks_exactly_those_rows():
    x = _spec_batch("cpu", b=1)[0]
    out = MaskFreq(size=7, start=12, val=3.5)(x, split_idx=0)
    rows = (out == 3.5).all(-1)  # [C, F]
    assert rows.nonzero()[:, 1].unique().tolist() == list(range(12, 19))
    assert torch.equal(out[:, :12], x[:, :12]) and torch.equal(out[:, 19:], x[:, 19:])
    out_t = MaskTime(size=5, start=0, val=3.5)(x, split_idx=0)
    assert (out_t[..., :5] == 3.5).all() and torch.equal(out_t[..., 5:], x[..., 5:])


@pytest.mark.parametrize(
    "tfm,axis", [(MaskFreqGPU(min_size=6, max_size=6), 2), (MaskTimeGPU(min_size=6, max_size=6), 3)]
)
def test_gpu_masks_have_their_width_and_fill_with_the_clip_mean(tfm, axis, device):
    x = _spec_batch(device)
    out = tfm(x, split_idx=0)
    plain, y = x.as_subclass(torch.Tensor), out.as_subclass(torch.Tensor)
    other = 3 if axis == 2 else 2
    masked = (y != plain).all(other)  # [B, C, length]: lines changed entirely
    assert (masked.sum(-1) == 6).all()  # one band of 6 per item, the same on both channels
    assert torch.equal(masked[:, 0], masked[:, 1])
    fill = plain.double().mean((-2, -1), keepdim=True).float()
    assert torch.allclose(torch.where(y != plain, y, fill), fill.expand_as(y), atol=1e-4)
    assert out.sr == 16000 and type(out) is AudioSpectrogram


def test_masks_fill_with_zero_after_normalization_and_keep_the_mean(device):
    x = _spec_batch(device, b=64, t=100)
    mean = x.as_subclass(torch.Tensor).mean((0, 1, 3), keepdim=True)
    std = x.as_subclass(torch.Tensor).std((0, 1, 3), keepdim=True)
    normalized = SpecNormalize(mean, std, axes=(0, 1, 3))(x)
    assert normalized.standardized
    masked = MaskTimeGPU(num_masks=2, min_size=10, max_size=30)(
        MaskFreqGPU(min_size=5, max_size=10)(normalized, split_idx=0), split_idx=0
    )
    plain, out = normalized.as_subclass(torch.Tensor), masked.as_subclass(torch.Tensor)
    changed = out != plain
    assert changed.float().mean() > 0.2
    assert (out[changed] == 0).all()
    # Each frequency row still has mean 0 over the batch (what SpecNormalize made it), up to sampling noise.
    row_means = out.double().mean((0, 1, 3))
    assert row_means.abs().max() < 0.05
    # InstanceSpecNorm marks its output standardized too: masks fill it with 0 as well.
    inst = InstanceSpecNorm()(x)
    assert (MaskFreqGPU(min_size=5, max_size=5)(inst, split_idx=0) == 0).sum() >= 5 * 100 * 2 * 64
    # SlidingSpecNorm without norm_vars removes the mean only (marked `centred`): 0 is still its mean.
    slid = SlidingSpecNorm(window=50)(x)
    assert slid.centred and not getattr(slid, "standardized", False)
    assert (MaskFreqGPU(min_size=5, max_size=5)(slid, split_idx=0) == 0).sum() >= 5 * 100 * 2 * 64


@pytest.mark.parametrize("shifts", [[3, -5, 0, 40, -40, 12]])
@pytest.mark.parametrize("roll", [False, True])
def test_shift_signal_moves_each_item_by_its_exact_offset(shifts, roll, device):
    x = _signal_batch(device, t=50)
    out = shift_signal(x.as_subclass(torch.Tensor), torch.tensor(shifts, device=device), roll=roll)
    ref = x.cpu().as_subclass(torch.Tensor).numpy()
    for i, s in enumerate(shifts):
        if roll:
            expected = np.roll(ref[i], s, axis=-1)
        else:
            expected = np.zeros_like(ref[i])
            if s >= 0:
                expected[:, s:] = ref[i][:, : 50 - s]
            else:
                expected[:, :s] = ref[i][:, -s:]
        np.testing.assert_array_equal(out[i].cpu().numpy(), expected)
        np.testing.assert_array_equal(
            shift_signal(x[i].as_subclass(torch.Tensor), s, roll=roll).cpu().numpy(), expected
        )


def test_signal_shifter_moves_an_impulse_within_its_bounds(device):
    x = torch.zeros(32, 1, 1000, device=device)
    x[:, :, 500] = 1.0
    audio = AudioTensor(x, sr=1000)
    out = SignalShifter(p=1.0, max_pct=0.2)(audio, split_idx=0)
    offsets = out.as_subclass(torch.Tensor).argmax(-1).flatten().cpu() - 500
    assert offsets.abs().max() <= 200 and len(offsets.unique()) > 5  # a shift per item
    later = SignalShifter(p=1.0, max_time=0.1, direction=1)(audio, split_idx=0)
    offsets = later.as_subclass(torch.Tensor).argmax(-1).flatten().cpu() - 500
    assert offsets.min() >= 0 and offsets.max() <= 100
    assert out.sr == 1000


def test_change_volume_changes_the_level_by_the_gain_in_db(device):
    x = _signal_batch(device, b=16)
    out = ChangeVolumeGPU(p=1.0, lower=0.5, upper=2.0)(x, split_idx=0)
    rms = lambda t: t.as_subclass(torch.Tensor).double().pow(2).mean((1, 2)).sqrt()
    db = 20 * torch.log10(rms(out) / rms(x))
    assert db.min() >= 20 * np.log10(0.5) - 1e-6 and db.max() <= 20 * np.log10(2.0) + 1e-6
    ratio = out.as_subclass(torch.Tensor) / x.as_subclass(torch.Tensor)  # one gain per item
    assert torch.allclose(ratio, ratio[..., :1].expand_as(ratio), rtol=1e-5)
    half = ChangeVolume(p=1.0, lower=0.5, upper=0.5)(x, split_idx=0)
    assert (20 * torch.log10(rms(half) / rms(x))).cpu().numpy() == pytest.approx(-6.0206, abs=1e-3)
    none = ChangeVolumeGPU(p=0.0)(x, split_idx=0)
    assert torch.equal(none, x)


def test_add_noise_gpu_level_is_relative_to_each_item_std(device):
    x = _signal_batch(device, b=8, t=20000)
    out = AddNoiseGPU(min_level=0.2, max_level=0.2, color=NoiseColor.Pink)(x, split_idx=0)
    noise = (out - x).as_subclass(torch.Tensor).double()
    ratio = noise.reshape(8, -1).std(1) / x.as_subclass(torch.Tensor).double().reshape(8, -1).std(1)
    assert ratio.cpu().numpy() == pytest.approx(np.full(8, 0.2), rel=0.15)
    half = AddNoiseGPU(p=0.5, min_level=0.2, max_level=0.2)(_signal_batch(device, b=64), split_idx=0)
    changed = (half != _signal_batch(device, b=64)).as_subclass(torch.Tensor).flatten(1).any(1).float().mean()
    assert 0.25 < changed < 0.75
    spec = _spec_batch(device)
    assert (AddNoiseGPU(min_level=0.1)(spec, split_idx=0) != spec).any()


def test_add_noise_scales_with_mean_absolute_amplitude():
    x = AudioTensor(torch.full((1, 50000), 2.0), sr=8000)
    out = AddNoise(noise_level=0.1, p=1.0)(x, split_idx=0)
    assert (out - x).as_subclass(torch.Tensor).std().item() == pytest.approx(0.2, rel=0.05)


@pytest.mark.parametrize("bad", [3, -2.5, "pink"])
def test_invalid_noise_color_is_an_error(bad):
    with pytest.raises(ValueError, match="color"):
        AddNoiseGPU(color=bad)
    with pytest.raises(ValueError, match="color"):
        AddNoise(color=bad)


def test_cutout_silences_one_region_of_the_drawn_length(device):
    x = AudioTensor(torch.rand(16, 2, 1000, device=device) + 0.5, sr=1000)
    out = SignalCutoutGPU(p=1.0, min_cut_pct=0.1, max_cut_pct=0.2)(x, split_idx=0).as_subclass(torch.Tensor)
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1])
    n = zero[:, 0].sum(-1)
    assert ((n >= 100) & (n <= 200)).all()
    rises = torch.diff(zero[:, 0].to(torch.int8), dim=-1, prepend=torch.zeros(16, 1, dtype=torch.int8, device=device))
    assert ((rises == 1).sum(-1) == 1).all()  # contiguous
    assert SignalCutout(p=1.0, max_cut_pct=0.3)(x, split_idx=0).shape == x.shape


def test_signal_loss_drops_the_drawn_fraction_of_samples(device):
    x = AudioTensor(torch.rand(4, 2, 20000, device=device) + 0.5, sr=1000)
    out = SignalLossGPU(p=1.0, min_cut_pct=0.3, max_cut_pct=0.3)(x, split_idx=0).as_subclass(torch.Tensor)
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1])
    assert zero.float().mean().item() == pytest.approx(0.3, abs=0.02)
    loss = SignalLoss(p=1.0, max_loss_pct=0.2)(x, split_idx=0).as_subclass(torch.Tensor)
    assert (loss == 0).float().mean() <= 0.21


def test_delta_matches_torchaudio_compute_deltas(device):
    x = _spec_batch(device)
    out = DeltaGPU(width=5)(x)
    plain = x.as_subclass(torch.Tensor)
    d1 = AF.compute_deltas(plain, win_length=5)
    assert out.shape == (6, 6, 40, 60)
    assert torch.equal(out[:, :2].as_subclass(torch.Tensor), plain)
    assert torch.allclose(out[:, 2:4].as_subclass(torch.Tensor), d1)
    assert torch.allclose(out[:, 4:].as_subclass(torch.Tensor), AF.compute_deltas(d1, win_length=5))
    # Independent check: a ramp rising by 2 per frame has delta 2 away from the edges, delta2 0.
    ramp = AudioSpectrogram(2.0 * torch.arange(30.0).repeat(1, 4, 1), sr=16000, hop_length=128)
    d = Delta(width=9)(ramp)
    assert torch.allclose(d[1, :, 4:-4], torch.full((4, 22), 2.0))
    assert torch.allclose(d[2, :, 8:-8], torch.zeros(4, 14), atol=1e-5)


def test_crop_time_matches_resize_signal_then_spectrogram():
    a2s = AudioToSpec(n_fft=512, hop_length=128)
    audio = AudioTensor(torch.randn(1, 48000), sr=16000)
    for ms in (700, 1000, 5000):
        for mode in ("zeros", "zeros_after", "repeat"):
            cropped = CropTime(ms, pad_mode=mode)(a2s(audio), split_idx=0)
            assert cropped.shape == a2s(ResizeSignal(ms, pad_mode=mode)(audio)).shape
    sg = a2s(audio)
    assert torch.equal(CropTime(1000)(sg), sg[..., :126])  # validation: from the first frame
    padded = CropTime(5000, pad_mode="zeros_after")(sg)
    assert torch.equal(padded[..., : sg.width], sg) and (padded[..., sg.width :] == 0).all()
    with pytest.raises(ValueError, match="pad_mode"):
        CropTime(1000, pad_mode="zerosafter")


def test_sgroll_rolls_each_item_and_resize_interpolates(device):
    x = _spec_batch(device, b=8)
    out = SGRoll(max_shift_pct=0.5)(x, split_idx=0).as_subclass(torch.Tensor)
    plain = x.as_subclass(torch.Tensor)
    for i in range(8):
        matches = [k for k in range(-30, 31) if torch.equal(out[i], torch.roll(plain[i], k, -1))]
        assert len(matches) == 1
    resized = TfmResizeGPU((20, 30))(x)
    ref = torch.nn.functional.interpolate(plain, size=(20, 30), mode="bilinear", align_corners=False)
    assert torch.allclose(resized.as_subclass(torch.Tensor), ref) and resized.sr == 16000
    assert TfmResize(16)(x[0]).shape == (2, 16, 16)


def _augmentations():
    return [
        (SignalShifter(p=1.0), "signal"),
        (SignalShifter(p=1.0, roll=True), "signal"),
        (AddNoiseGPU(p=0.5, max_level=0.1, color=NoiseColor.Pink), "signal"),
        (AddNoise(p=1.0, color=NoiseColor.Brown), "signal"),
        (ChangeVolumeGPU(p=0.5), "signal"),
        (ChangeVolume(p=1.0), "signal"),
        (SignalCutoutGPU(p=0.5), "signal"),
        (SignalLossGPU(p=0.5), "signal"),
        (MaskFreqGPU(num_masks=2, p=0.5), "spec"),
        (MaskTimeGPU(num_masks=2), "spec"),
        (MaskFreq(size=5), "spec"),
        (MaskTime(size=5), "spec"),
        (SGRoll(), "spec"),
        (DeltaGPU(), "spec"),
        (TfmResizeGPU(32), "spec"),
        (AddNoiseGPU(max_level=0.1), "spec"),
        (SignalShifter(p=1.0, max_time=0.1), "spec"),
    ]


@pytest.mark.parametrize("tfm,kind", _augmentations(), ids=lambda v: type(v).__name__ if not isinstance(v, str) else v)
def test_augmentations_read_no_host_value_and_are_reproducible(tfm, kind, device):
    x = _signal_batch(device) if kind == "signal" else _spec_batch(device)
    with no_host_reads():
        torch.manual_seed(0)
        first = tfm(x, split_idx=0)
        torch.manual_seed(0)
        second = tfm(x, split_idx=0)
    assert torch.equal(first, second)
    assert first.device == x.device and first.sr == x.sr and type(first) is type(x)
    item = tfm(x[0], split_idx=0)  # items work too
    assert item.ndim == x.ndim - 1


@pytest.mark.parametrize("tfm,kind", _augmentations(), ids=lambda v: type(v).__name__ if not isinstance(v, str) else v)
def test_random_augmentations_leave_validation_batches_untouched(tfm, kind):
    x = _signal_batch("cpu") if kind == "signal" else _spec_batch("cpu")
    if tfm.split_idx == 0:  # augmentations
        assert tfm(x, split_idx=1) is x
    else:  # shape transforms (Delta, TfmResize) apply on every split
        assert tfm(x, split_idx=1).shape != x.shape


def test_spectrogram_transforms_warn_on_waveforms():
    audio = AudioTensor(torch.randn(1, 1000), sr=1000)
    for tfm in (CropTime(100), DeltaGPU(), MaskFreq(), MaskTimeGPU(), SGRoll(), TfmResize(8)):
        with pytest.warns(UserWarning, match=type(tfm).__name__):
            assert tfm(audio) is audio
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DeltaGPU()(_spec_batch("cpu"))


def test_masks_larger_than_the_spectrogram_are_an_error():
    with pytest.raises(ValueError, match=r"max_size=50 .*\(6, 2, 40, 60\)"):
        MaskFreqGPU(min_size=1, max_size=50)(_spec_batch("cpu"), split_idx=0)
    with pytest.raises(ValueError, match="does not fit"):
        MaskTime(size=10, start=55)(_spec_batch("cpu"), split_idx=0)


def test_shifting_a_spectrogram_fills_with_the_no_information_value(device):
    x = _spec_batch(device, b=8)
    out = SignalShifter(p=1.0, max_pct=0.5, direction=1)(x, split_idx=0).as_subclass(torch.Tensor)
    plain = x.as_subclass(torch.Tensor)
    clip_mean = plain.mean((-2, -1), keepdim=True)
    for i in range(8):
        k = next(k for k in range(31) if torch.equal(out[i, ..., k:], plain[i, ..., : 60 - k]))
        assert torch.allclose(out[i, ..., :k], clip_mean[i].expand(2, 40, k))
    std = AudioSpectrogram(plain, sr=16000, hop_length=128, standardized=True)
    shifted = SignalShifter(p=1.0, max_pct=0.5, direction=-1)(std, split_idx=0).as_subclass(torch.Tensor)
    for i in range(8):
        k = next(k for k in range(31) if torch.equal(shifted[i, ..., : 60 - k], plain[i, ..., k:]))
        assert (shifted[i, ..., 60 - k :] == 0).all()
    fixed = shift_signal(plain, -3, fill=clip_mean)
    assert torch.equal(fixed[..., :-3], plain[..., 3:]) and torch.equal(fixed[..., -3:], clip_mean.expand(8, 2, 40, 3))


def test_mask_probability_is_per_item(device):
    x = _spec_batch(device, b=200, f=20, t=20)
    masked = lambda p: (MaskFreqGPU(min_size=2, max_size=2, p=p)(x, split_idx=0) != x).flatten(1).any(1)
    assert masked(0.0).sum() == 0 and masked(1.0).all()
    assert 0.35 < masked(0.5).float().mean() < 0.65
    with pytest.raises(ValueError, match="probability"):
        MaskTimeGPU(p=1.5)
