"""SpecNormalize and AudioNormalize against float64 numpy references, in DataBlock pipelines, and exported."""

import pickle

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torch.nn as nn
from conftest import tone, write_audio
from fastai.data.transforms import Normalize
from fastai.learner import Learner, load_learner
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import TensorImage, TensorImageBase, TensorMask

from specnorm.audio import AudioSpectrogram, AudioTensor
from specnorm.config import AudioConfig
from specnorm.data import get_dls
from specnorm.kernels import kernels_on
from specnorm.normalize import AudioNormalize, SpecNormalize
from specnorm.spectrogram import AudioToSpec

GLOBAL, CHANNEL = (0, 2, 3), (0, 1, 3)


def db_batch(b=6, c=1, f=20, t=30, seed=0):
    "dB-like spectrogram values: each frequency row has its own level and spread."
    g = torch.Generator().manual_seed(seed)
    level = torch.linspace(-90, -20, f).reshape(1, 1, f, 1)
    spread = torch.linspace(2, 15, f).reshape(1, 1, f, 1)
    return level + spread * torch.randn(b, c, f, t, generator=g)


def ref_stats(x, axes):
    "Two-pass float64 mean and population std over `axes`, kept dims of size 1."
    a = np.asarray(x.detach().cpu().as_subclass(torch.Tensor), dtype=np.float64)
    return a.mean(axis=axes, keepdims=True), a.std(axis=axes, keepdims=True)


def f64(x):
    return np.asarray(x.detach().cpu().as_subclass(torch.Tensor), dtype=np.float64)


# -- SpecNormalize on batches -----------------------------------------------------------------


@pytest.mark.parametrize("axes", [GLOBAL, CHANNEL])
def test_output_has_zero_mean_unit_std_and_decodes_back(device, axes):
    x = AudioSpectrogram(db_batch(), sr=16000, hop_length=200, to_db=True).to(device)
    mean, std = ref_stats(x, axes)
    norm = SpecNormalize(mean, std, axes=axes)
    y = norm(x)
    assert type(y) is AudioSpectrogram and y.device.type == device.type
    assert (y.sr, y.hop_length, y.to_db) == (16000, 200, True)
    assert y.shape == x.shape and y.dtype == torch.float32
    out_mean, out_std = ref_stats(y, axes)
    np.testing.assert_allclose(out_mean, 0, atol=1e-5)
    np.testing.assert_allclose(out_std, 1, atol=1e-5)
    # elementwise against the float64 two-pass formula
    np.testing.assert_allclose(f64(y), (f64(x) - mean) / std, atol=2e-5)
    back = norm.decode(y)
    assert type(back) is AudioSpectrogram and back.sr == 16000
    np.testing.assert_allclose(f64(back), f64(x), rtol=0, atol=1e-4)  # |x| <= ~150 dB: a few float32 ulps


def test_stats_are_plain_float32_cpu_tensors_in_every_accepted_form():
    x = db_batch()
    m64, s64 = ref_stats(x, CHANNEL)
    forms = [
        (m64, s64),
        (m64.ravel(), s64.ravel()),
        (list(m64.ravel()), list(s64.ravel())),
        (AudioSpectrogram(torch.from_numpy(m64)), TensorImage(torch.from_numpy(s64))),
    ]
    outputs = []
    for mean, std in forms:
        norm = SpecNormalize(mean, std, axes=CHANNEL)
        for v in (norm.mean, norm.std):
            assert type(v) is torch.Tensor and v.dtype == torch.float32 and v.device.type == "cpu"
            assert v.shape == (1, 1, 20, 1)
        outputs.append(norm(AudioSpectrogram(x)))
    for y in outputs[1:]:
        assert torch.equal(y, outputs[0])
    assert SpecNormalize(-50, 10).mean.shape == (1, 1, 1, 1)
    assert SpecNormalize([-50, -40], [10, 5]).mean.shape == (1, 2, 1, 1)  # per-channel of stereo


def test_per_channel_stats_of_a_multichannel_batch(device):
    x = torch.cat([db_batch(c=1, seed=1), 3 * db_batch(c=1, seed=2)], 1).to(device)
    mean, std = ref_stats(x, GLOBAL)
    assert mean.shape == (1, 2, 1, 1)
    y = SpecNormalize(mean, std)(AudioSpectrogram(x))
    out_mean, out_std = ref_stats(y, GLOBAL)
    np.testing.assert_allclose(out_mean, 0, atol=1e-5)
    np.testing.assert_allclose(out_std, 1, atol=1e-5)


class OtherSpec(TensorImageBase):
    "A spectrogram-like type from some other library."


def test_every_tensor_image_base_type_normalizes_with_stats_from_typed_batches(device):
    base = db_batch().to(device)
    # fastai keeps the TensorBase subclass of a statistic: mixing two subclasses would raise TypeError
    typed_mean = TensorImage(base).mean(GLOBAL, keepdim=True)
    typed_std = OtherSpec(base).std(GLOBAL, keepdim=True, correction=0)
    assert isinstance(typed_mean, TensorImage) and isinstance(typed_std, OtherSpec)
    norm = SpecNormalize(typed_mean, typed_std)
    mean, std = ref_stats(base, GLOBAL)
    expected = (f64(base) - mean) / std
    for cls in (TensorImage, AudioSpectrogram, OtherSpec):
        x = cls(base.clone())
        x.label = "kept"
        y = norm(x)
        assert type(y) is cls and y.label == "kept"
        np.testing.assert_allclose(f64(y), expected, atol=2e-5)


def test_plain_tensors_and_masks_pass_through_untouched():
    norm = SpecNormalize(-50.0, 10.0)
    plain = torch.randn(2, 1, 4, 5)
    mask = TensorMask(torch.ones(2, 4, 5))
    assert norm(plain) is plain and norm.decode(plain) is plain
    assert norm(mask) is mask
    assert isinstance(norm, Normalize)  # vision_learner then adds no ImageNet normalization on top


def test_an_item_without_batch_dim_normalizes_like_the_batch():
    x = AudioSpectrogram(db_batch())
    norm = SpecNormalize(*ref_stats(x, CHANNEL), axes=CHANNEL)
    assert torch.equal(norm(x[2]), norm(x)[2])


def test_integer_and_float64_inputs():
    norm = SpecNormalize(2.0, 4.0)
    y = norm(TensorImage(torch.arange(8).reshape(1, 2, 2, 2)))
    assert y.dtype == torch.float32
    np.testing.assert_allclose(f64(y).ravel(), (np.arange(8) - 2) / 4, atol=1e-6)
    y64 = norm(torch.arange(8, dtype=torch.float64).reshape(1, 2, 2, 2).as_subclass(TensorImage))  # fastai's
    # TensorImage(...) would make it float32
    assert y64.dtype == torch.float64


def test_constant_and_all_zero_channels_give_finite_defined_values(device):
    x = db_batch().to(device)
    x[:, :, 3] = -100.0  # AmplitudeToDB's floor: a silent frequency row
    x[:, :, 7] = 0.0  # exactly zero everywhere
    mean, std = ref_stats(x, CHANNEL)
    assert std[0, 0, 3, 0] == 0 and std[0, 0, 7, 0] == 0
    norm = SpecNormalize(mean, std, axes=CHANNEL)
    y = norm(AudioSpectrogram(x))
    assert torch.isfinite(y).all()
    # floored std: 1e-3 * |mean| = 0.1 dB for the -100 dB row, so it maps to 0 up to float32 rounding
    np.testing.assert_allclose(f64(y)[:, :, 3], 0, atol=1e-3)
    assert norm.std[0, 0, 3, 0] == 0  # the recorded statistic is untouched, only its use is floored
    np.testing.assert_array_equal(f64(y)[:, :, 7], 0)
    # a later value off the constant is scaled by 1 / 0.1 dB, finite
    probe = x.clone()
    probe[:, :, 3] = -99.0
    probe_y = norm(AudioSpectrogram(probe))
    np.testing.assert_allclose(f64(probe_y)[:, :, 3], 10, rtol=1e-3)
    np.testing.assert_allclose(f64(norm.decode(probe_y)), f64(probe), atol=1e-4)  # decodes uses the floored std
    np.testing.assert_allclose(f64(norm.decode(y)), f64(x), atol=1e-4)
    others = [r for r in range(20) if r not in (3, 7)]
    np.testing.assert_allclose(ref_stats(y, CHANNEL)[1][:, :, others], 1, atol=1e-5)


def test_a_zero_variance_global_statistic_does_not_give_inf():
    x = torch.full((2, 1, 3, 4), -80.0)
    y = SpecNormalize(*ref_stats(x, GLOBAL))(AudioSpectrogram(x))
    assert torch.isfinite(y).all() and y.abs().max() < 1e-3


def test_nan_or_inf_batches_are_reported_by_check(device):
    # counted on the device per batch; check() names the transform, the bad batches, the first one and its shape
    norm = SpecNormalize(-50.0, 10.0)
    norm(AudioSpectrogram(db_batch().to(device)))
    x = db_batch().to(device)
    x[0, 0, 1, 2] = x[3, 0, 4, 5] = float("nan")
    norm(AudioSpectrogram(x))
    x = db_batch(b=2).to(device)
    x[1, 0, 0, 0] = float("-inf")
    norm(AudioSpectrogram(x))
    msg = (
        r"SpecNormalize: 2 of the 3 batches since the last check held NaN or Inf outputs \(or finite outputs so "
        r"large that their sum overflows float32\); the first is batch 1 "
    )
    with pytest.raises(ValueError, match=msg + r"\(counting from 0\) of shape \(6, 1, 20, 30\)"):
        norm.check()
    norm.check()  # reported once: the next check starts over
    # huge finite outputs are not reported as NaN: up to float32's range divided by their count, nothing is
    # reported; beyond it (a sum that overflows) the message says that this is what it found
    x = db_batch().to(device)
    x[:, :, :10] = 1e33  # outputs of 1e30, 1800 of them: a sum of 1.8e33
    norm = SpecNormalize(0.0, 1e3)
    assert torch.isfinite(norm(AudioSpectrogram(x))).all()
    norm.check()
    x[:, :, :10] = 3e38  # outputs of 3e35: their sum overflows
    assert torch.isfinite(norm(AudioSpectrogram(x))).all()
    if kernels_on(x, "affine"):  # the fused kernel counts the NaN/Inf outputs themselves: none here
        norm.check()
    else:
        with pytest.raises(ValueError, match=r"held NaN or Inf outputs \(or finite outputs so large that their sum"):
            norm.check()
    # opting out: the NaN propagates (documented), nothing is raised
    x = db_batch().to(device)
    x[0, 0, 0, 0] = float("nan")
    y = SpecNormalize(-50.0, 10.0, check_finite=False)(AudioSpectrogram(x))
    assert int(torch.isnan(y).sum()) == 1


def test_bad_statistics_and_shapes_are_named():
    with pytest.raises(ValueError, match="mean holds 1 NaN or Inf"):
        SpecNormalize([0.0, float("nan")], [1.0, 1.0], axes=CHANNEL)
    with pytest.raises(ValueError, match="std must be >= 0"):
        SpecNormalize(0.0, -1.0)
    with pytest.raises(ValueError, match="give both mean and std"):
        SpecNormalize(mean=0.0)
    with pytest.raises(ValueError, match=r"shape \(1, 1, 3, 1\).*dims \[2\]"):
        SpecNormalize(torch.zeros(1, 1, 3, 1), torch.ones(1, 1, 3, 1), axes=GLOBAL)
    with pytest.raises(ValueError, match="axes must"):
        SpecNormalize(axes=(2, 3))
    norm = SpecNormalize(torch.zeros(10), torch.ones(10), axes=CHANNEL)
    with pytest.raises(ValueError, match=r"statistics of shape \(1, 1, 10, 1\).*batch has shape \(2, 1, 12, 5\)"):
        norm(AudioSpectrogram(torch.zeros(2, 1, 12, 5)))
    with pytest.raises(ValueError, match=r"got shape \(12, 5\)"):
        norm(AudioSpectrogram(torch.zeros(12, 5)))
    with pytest.raises(ValueError, match="has no statistics"):
        SpecNormalize()(AudioSpectrogram(torch.zeros(2, 1, 12, 5)))


def test_device_cache_and_pickling_keep_only_cpu_statistics(device):
    x = AudioSpectrogram(db_batch()).to(device)
    for axes in (GLOBAL, CHANNEL):
        norm = SpecNormalize(*ref_stats(x, axes), axes=axes)
        y = norm(x)
        assert len(norm._cache) == 1
        cached = next(iter(norm._cache.values()))
        norm(x), norm(x)
        assert next(iter(norm._cache.values()))[1] is cached[1]  # built once, reused
        assert all(t.device.type == "cpu" for t in (norm.mean, norm.std))
        state = pickle.loads(pickle.dumps(norm)).__dict__
        assert state["_cache"] == {}
        tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
        assert len(tensors) >= 6 and all(type(t) is torch.Tensor and t.device.type == "cpu" for t in tensors)
        assert torch.equal(pickle.loads(pickle.dumps(norm))(x), y)
        norm.std = norm.std * 2  # new statistics clear the cache
        assert norm._cache == {}
        np.testing.assert_allclose(f64(norm(x)), f64(y) / 2, atol=1e-5)


# -- AudioNormalize ---------------------------------------------------------------------------


def test_audio_normalize_item_against_float64_reference():
    x = AudioTensor(torch.from_numpy(tone(440, 8000, 0.5, amplitude=0.3, channels=2) + 0.1), sr=8000)
    x[1] *= 0.5
    a = f64(x)
    expected = (a - a.mean()) / a.std()
    y = AudioNormalize()(x)
    assert type(y) is AudioTensor and y.sr == 8000 and y.shape == x.shape
    np.testing.assert_allclose(f64(y), expected, atol=1e-5)
    # the level difference between the channels is kept
    assert f64(y)[1].std() == pytest.approx(0.5 * f64(y)[0].std(), rel=1e-4)
    per_channel = AudioNormalize(per_channel=True)(x)
    np.testing.assert_allclose(f64(per_channel), (a - a.mean(1, keepdims=True)) / a.std(1, keepdims=True), atol=1e-5)


def test_audio_normalize_works_item_by_item_on_a_batch():
    g = torch.Generator().manual_seed(0)
    items = [AudioTensor(torch.randn(2, 300, generator=g) * s + o, sr=16000) for s, o in ((1, 0), (0.01, 0.5), (3, -1))]
    norm = AudioNormalize()
    batch = AudioTensor(torch.stack(items), sr=16000)
    out = norm(batch)
    assert type(out) is AudioTensor and out.sr == 16000
    for i, item in enumerate(items):
        torch.testing.assert_close(out[i].as_subclass(torch.Tensor), norm(item).as_subclass(torch.Tensor))
        # float32 rounding: about ulp(|mean|) / std = 6e-8 / 0.01 for the second item
        assert f64(out[i]).mean() == pytest.approx(0, abs=2e-5) and f64(out[i]).std() == pytest.approx(1, abs=2e-5)


def test_audio_normalize_silence_nan_and_empty():
    norm = AudioNormalize()
    g = torch.Generator().manual_seed(0)
    # std <= 1e-6 (-120 dBFS) is silence, even with a DC offset; 16-bit dither (~3e-5) is not
    for silence in (
        torch.zeros(1, 500),
        torch.full((1, 500), 0.1),
        torch.full((2, 500), -0.3),
        1e-8 * torch.randn(1, 500, generator=g),
        0.2 + 1e-7 * torch.randn(1, 500, generator=g),
    ):
        y = norm(AudioTensor(silence, sr=8000))
        assert torch.equal(y.as_subclass(torch.Tensor), torch.zeros_like(silence))
    dither = norm(AudioTensor(3e-5 * torch.randn(1, 500, generator=g), sr=8000))
    assert f64(dither).std() == pytest.approx(1, abs=1e-5)
    # one silent channel, one not: per channel, only the silent one is zeros
    x = torch.stack([torch.zeros(500), torch.from_numpy(tone(100, 8000, 500 / 8000)[0])])
    y = AudioNormalize(per_channel=True)(AudioTensor(x, sr=8000))
    assert torch.equal(y[0].as_subclass(torch.Tensor), torch.zeros(500))
    assert f64(y[1]).std() == pytest.approx(1, abs=1e-5)
    bad = torch.randn(1, 100)
    bad[0, [3, 50]] = float("nan")
    bad[0, 7] = float("inf")
    norm.check()  # the good signals above: nothing to report
    assert torch.isnan(norm(AudioTensor(bad, sr=8000))).all()  # the item's statistics are NaN
    with pytest.raises(ValueError, match=r"AudioNormalize: 1 of the 1 batches .* of shape \(1, 100\)"):
        norm.check()
    with pytest.raises(ValueError, match="empty signal"):
        norm(AudioTensor(torch.zeros(1, 0), sr=8000))
    plain = torch.randn(1, 100)
    assert norm(plain) is plain


# -- In DataBlock pipelines -------------------------------------------------------------------


def spec_tfm():
    return AudioToSpec.from_cfg(AudioConfig.BasicSpectrogram())


def test_pipeline_with_audio_normalize_class_and_spec_normalize(esc50_like):
    df, path = esc50_like
    probe = get_dls(
        df,
        path,
        bs=4,
        num_workers=0,
        item_tfms=[AudioNormalize],
        batch_tfms=[spec_tfm()],
        shuffle=False,
        crop_signal_to=None,
    )
    train_specs = torch.cat([x for x, _ in probe.train])
    mean, std = ref_stats(train_specs, CHANNEL)
    dls = get_dls(
        df,
        path,
        bs=4,
        num_workers=0,
        item_tfms=[AudioNormalize],
        batch_tfms=[spec_tfm(), SpecNormalize(mean, std, axes=CHANNEL)],
        shuffle=False,
        crop_signal_to=None,
    )
    assert any(type(t) is AudioNormalize for t in dls.train.after_item.fs)  # the class was instantiated
    wave = dls.train.after_item(dls.train_ds[0])[0]
    assert isinstance(wave, AudioTensor) and f64(wave).std() == pytest.approx(1, abs=1e-5)
    x, _ = dls.train.one_batch()
    assert isinstance(x, AudioSpectrogram) and x.sr == 16000 and x.shape[1:] == (1, 201, 81)
    normalized = torch.cat([x for x, _ in dls.train])
    out_mean, out_std = ref_stats(normalized, CHANNEL)
    np.testing.assert_allclose(out_mean, 0, atol=1e-4)
    np.testing.assert_allclose(out_std, 1, atol=1e-4)
    shown = dls.train.decode((x, _))[0]  # what show_batch draws: dB again
    np.testing.assert_allclose(f64(shown), f64(train_specs[:4]), atol=1e-3)


def shifted_valid_dataset(root, n=10, sr=16000):
    "Clips of noisy tones; the validation fold (1) is 20 dB louder than the training folds."
    (root / "audio").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        fold = 1 if i % 3 == 0 else 2
        x = tone(200 * (i % 4 + 1), sr, 0.25, amplitude=0.05) + 0.005 * rng.standard_normal((1, sr // 4))
        x = x * (10 if fold == 1 else 1)
        write_audio(root / "audio" / f"{i}.wav", x.astype(np.float32), sr)
        rows.append(dict(filename=f"{i}.wav", fold=fold, category=f"c{i % 2}"))
    return pd.DataFrame(rows)


def split_reference(df, path, fold, axes):
    "Stats over the spectrograms of one split's clips, each read with soundfile and transformed alone."
    a2s = spec_tfm()
    specs = [
        f64(a2s(AudioTensor(torch.from_numpy(sf.read(path / fn, dtype="float32")[0][None]), sr=16000)))
        for fn in df.filename[df.fold == fold]
    ]
    return ref_stats(torch.from_numpy(np.stack(specs)), axes)


@pytest.mark.parametrize("axes", [GLOBAL, CHANNEL])
def test_setups_computes_stats_from_the_training_split_only(tmp_path, axes):
    df = shifted_valid_dataset(tmp_path)
    path = tmp_path / "audio"
    norm = SpecNormalize(axes=axes, progress=False)
    dls = get_dls(df, path, bs=4, num_workers=0, batch_tfms=[spec_tfm(), norm], crop_signal_to=None)
    train_mean, train_std = split_reference(df, path, 2, axes)
    valid_mean, _ = split_reference(df, path, 1, axes)
    assert type(norm.mean) is torch.Tensor and norm.mean.shape == train_mean.shape
    # all 6 training clips (the training loader, bs=4, drops 2 of them), spectrograms on, normalization off
    np.testing.assert_allclose(f64(norm.mean), train_mean, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(f64(norm.std), train_std, rtol=1e-3, atol=1e-3)
    assert np.abs(train_mean - valid_mean).mean() > 15  # the folds differ by ~20 dB
    assert dls.train.after_batch.fs[-1] is norm
    x, _ = dls.train.one_batch()
    assert f64(x).mean() == pytest.approx(0, abs=0.5)
    # the louder validation split comes out shifted by about +20 dB in units of std, as it should
    xv = torch.cat([x for x, _ in dls.valid])
    assert f64(xv).mean() > 0.5


def test_from_dls_and_from_stats_match_setups(tmp_path):
    from specnorm.stats import StatsRecorder

    df = shifted_valid_dataset(tmp_path)
    path = tmp_path / "audio"
    mean, std = split_reference(df, path, 2, CHANNEL)
    dls = get_dls(
        df, path, bs=4, num_workers=0, batch_tfms=[spec_tfm(), SpecNormalize(-40.0, 10.0)], crop_signal_to=None
    )
    # from_dls leaves out the normalizer already in the pipeline and uses the training split
    norm = SpecNormalize.from_dls(dls, axes=CHANNEL, progress=False)
    assert norm.axes == CHANNEL
    np.testing.assert_allclose(f64(norm.mean), mean, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(f64(norm.std), std, rtol=1e-3, atol=1e-3)
    half = SpecNormalize.from_dls(dls, axes=GLOBAL, fraction=0.5, progress=False)
    assert abs(half.mean.item() - split_reference(df, path, 2, GLOBAL)[0].item()) < 5
    # from StatsRecorders fed typed batches (AudioSpectrogram statistics would clash with TensorImage)
    glob, chan = StatsRecorder(red_dims=GLOBAL), StatsRecorder(red_dims=CHANNEL)
    for x, _ in get_dls(
        df, path, bs=4, num_workers=0, batch_tfms=[spec_tfm()], shuffle=False, crop_signal_to=None
    ).train:
        glob.update(x), chan.update(x)
    from_recorder = SpecNormalize.from_stats(chan)
    assert from_recorder.axes == CHANNEL
    np.testing.assert_allclose(f64(from_recorder.mean), mean, rtol=1e-4, atol=1e-3)
    y = from_recorder(TensorImage(torch.from_numpy(mean).float().expand(2, 1, 201, 5)))
    assert type(y) is TensorImage and y.abs().max() < 1e-3
    # the reference workflow's two normalizers, straight from the recorders
    spec = AudioSpectrogram(torch.from_numpy(mean + 2 * std).float().expand(2, 1, 201, 5), sr=16000)
    np.testing.assert_allclose(f64(SpecNormalize(chan.mean, chan.std, axes=CHANNEL)(spec)), 2, atol=1e-3)
    g_mean, g_std = split_reference(df, path, 2, GLOBAL)
    np.testing.assert_allclose(
        f64(SpecNormalize(glob.mean, glob.std, axes=GLOBAL)(spec)), (f64(spec) - g_mean) / g_std, atol=1e-4
    )


def test_setups_with_fraction_and_progress_bar(tmp_path):
    df = shifted_valid_dataset(tmp_path)
    path = tmp_path / "audio"
    norm = SpecNormalize(fraction=0.5, progress=True)
    get_dls(df, path, bs=2, num_workers=0, batch_tfms=[spec_tfm(), norm], crop_signal_to=None)
    train_mean = split_reference(df, path, 2, GLOBAL)[0].item()
    valid_mean = split_reference(df, path, 1, GLOBAL)[0].item()
    assert abs(norm.mean.item() - train_mean) < abs(norm.mean.item() - valid_mean)


def test_export_and_load_learner_keep_stats_and_predictions(esc50_like, tmp_path, device):
    df, path = esc50_like
    kwargs = dict(bs=4, num_workers=0, item_tfms=[AudioNormalize], device=device)
    probe = get_dls(df, path, batch_tfms=[spec_tfm()], shuffle=False, **kwargs, crop_signal_to=None)
    mean, std = ref_stats(torch.cat([x for x, _ in probe.train]), CHANNEL)
    norm = SpecNormalize(mean, std, axes=CHANNEL)
    dls = get_dls(df, path, batch_tfms=[spec_tfm(), norm], **kwargs, crop_signal_to=None)
    model = nn.Sequential(nn.AdaptiveAvgPool2d((8, 8)), nn.Flatten(), nn.Linear(64, dls.c)).to(device)
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat())
    items = df[df.fold == 1]
    preds, _ = learn.get_preds(dl=dls.test_dl(items))
    learn.export(tmp_path / "model.pkl")
    loaded = load_learner(tmp_path / "model.pkl")
    (restored,) = [t for t in loaded.dls.after_batch.fs if isinstance(t, SpecNormalize)]
    assert restored is not norm and all(key[1].type == "cpu" for key in restored._cache)
    assert restored.mean.device.type == "cpu" and torch.equal(restored.mean, norm.mean)
    assert torch.equal(restored.std, norm.std) and restored.axes == CHANNEL
    loaded_preds, _ = loaded.get_preds(dl=loaded.dls.test_dl(items))
    _, _, probs = loaded.predict(items.iloc[0])
    # exported from a GPU, the loaded learner computes its spectrograms with the CPU's FFT instead
    tol = dict(rtol=1e-5, atol=1e-6) if device.type == "cpu" else dict(rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(loaded_preds, preds.cpu(), **tol)
    torch.testing.assert_close(probs, preds[0].cpu(), **tol)
