"""NormDriftMonitor: detects a synthetic domain shift, leaves unchanged data alone."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import write_audio
from fastai.learner import Learner

from specnorm.audio import AudioSpectrogram, AudioTensor
from specnorm.config import AudioConfig
from specnorm.data import get_dls
from specnorm.drift import NormDriftMonitor
from specnorm.normalize import SpecNormalize
from specnorm.spectrogram import AudioToSpec
from specnorm.stats import StatsRecorder

F, T = 16, 40
CHANNEL_MEANS = torch.linspace(-80, -20, F, dtype=torch.float64)[None, None, :, None]
CHANNEL_STDS = torch.linspace(3, 12, F, dtype=torch.float64)[None, None, :, None]


def spectrograms(n, seed, gain_db=None, noise_scale=1.0):
    "dB-like batches whose rows differ in level and spread; `gain_db` makes rows louder, `noise_scale` wider."
    g = torch.Generator().manual_seed(seed)
    x = CHANNEL_MEANS + CHANNEL_STDS * noise_scale * torch.randn(n, 1, F, T, generator=g, dtype=torch.float64)
    if gain_db is not None:
        x = x + gain_db[None, None, :, None]
    return AudioSpectrogram(x.float(), sr=16000, n_fft=2 * (F - 1), hop_length=F, mel=False, to_db=True)


def reference_kl(train, new):
    "Float64 numpy KL divergence per row between Gaussians fitted to `train` and `new`."
    a, b = (t.double().numpy().transpose(2, 0, 1, 3).reshape(F, -1) for t in (train, new))
    d = (b.mean(1) - a.mean(1)) / a.std(1)
    r = b.var(1) / a.var(1)
    return (r - 1 - np.log(r) + d**2) / 2


@pytest.fixture
def train_recorder():
    return StatsRecorder((0, 1, 3)).update(spectrograms(256, seed=0))


def test_unchanged_data_is_not_flagged(train_recorder):
    new = spectrograms(64, seed=1)
    report = NormDriftMonitor(reference=train_recorder, warn=False).scan([new[:32], new[32:]])
    assert not report.flagged and report.score < 0.01
    np.testing.assert_allclose(report.kl, reference_kl(spectrograms(256, seed=0), new), rtol=1e-4, atol=1e-6)


def test_a_louder_band_is_detected_where_it_is(train_recorder):
    gain = torch.zeros(F, dtype=torch.float64)
    gain[10:13] = 15.0  # +15 dB in three rows
    new = spectrograms(64, seed=1, gain_db=gain)
    monitor = NormDriftMonitor(reference=train_recorder)
    with pytest.warns(UserWarning, match="drift score"):
        report = monitor.scan([new])
    assert report.flagged and set(np.argsort(report.kl)[-3:]) == {10, 11, 12}
    np.testing.assert_allclose(report.kl, reference_kl(spectrograms(256, seed=0), new), rtol=1e-4, atol=1e-6)
    assert report.frequencies is not None and report.plot().get_xlabel() == "frequency (Hz)"


def test_a_changed_noise_floor_is_detected(train_recorder):
    report = NormDriftMonitor(reference=train_recorder, warn=False).scan([spectrograms(64, seed=2, noise_scale=2.0)])
    assert report.flagged and np.all(report.var_ratio > 3) and np.all(np.abs(report.shift) < 0.2)


def test_updated_statistics_merge_or_replace(train_recorder):
    new = spectrograms(32, seed=3)
    monitor = NormDriftMonitor(reference=train_recorder, warn=False)
    monitor.scan([new])
    merged = monitor.updated_stats("merge")
    both = torch.cat([spectrograms(256, seed=0), new]).double()
    torch.testing.assert_close(merged.mean.double(), both.mean((0, 1, 3), keepdim=True), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(
        monitor.updated_stats("replace").mean.double(), new.double().mean((0, 1, 3), keepdim=True), rtol=1e-6, atol=1e-5
    )
    with pytest.raises(ValueError, match="merge' or 'replace"):
        monitor.updated_stats("average")


def test_without_statistics_it_says_what_it_needs():
    with pytest.raises(ValueError, match="needs training statistics"):
        NormDriftMonitor().scan([spectrograms(4, seed=0)])


def test_as_callback_on_validation_and_get_preds(esc50_like, tmp_path):
    df, path = esc50_like
    a2s = AudioToSpec.from_cfg(AudioConfig.BasicSpectrogram(n_fft=128))
    dls = get_dls(
        df,
        path,
        bs=4,
        num_workers=0,
        crop_signal_to=500,
        batch_tfms=[a2s, SpecNormalize(axes=(0, 1, 3), progress=False)],
    )
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, dls.c))
    monitor = NormDriftMonitor()
    learn = Learner(dls, model, cbs=monitor)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the validation fold is like the training folds: no warning
        learn.validate()
    assert not monitor.report.flagged
    # Deployment data, 20 dB louder: through the same pipeline, recorded denormalized, flagged.
    for fn in df.filename[:8]:
        audio = AudioTensor.create(path / fn)
        write_audio(path / f"loud-{fn}", audio.numpy() * 10, audio.sr)
    test_dl = dls.test_dl(df[:8].assign(filename="loud-" + df.filename[:8]))
    with pytest.warns(UserWarning, match="above threshold"):
        learn.get_preds(dl=test_dl)
    assert monitor.report.flagged and np.median(monitor.report.shift) > 0.5


def test_constant_training_channel_with_rounding_jitter_is_no_drift():
    # a constant training channel (std 0) against new data jittering by 1e-3 dB: both stds are floored
    # at 1e-3 * |mean| as SpecNormalize floors them, so the score is ~0 (it was 5.5e30 nats)
    train = torch.full((8, 1, 4, 50), -40.0)
    train[:, :, 1:] += torch.randn(8, 1, 3, 50, generator=torch.Generator().manual_seed(0)) * 5
    new = train.clone()
    new[:, :, 0] += torch.randn(8, 1, 50, generator=torch.Generator().manual_seed(1)) * 1e-3
    report = NormDriftMonitor(reference=StatsRecorder((0, 1, 3)).update(train), warn=False).scan([new])
    assert report.score < 1e-3 and not report.flagged
    assert abs(report.shift[0]) < 1e-3 and report.var_ratio[0] == pytest.approx(1.0)
    # a real shift of that channel is still seen: 1 dB against the 0.04 dB floor
    report = NormDriftMonitor(reference=StatsRecorder((0, 1, 3)).update(train), warn=False).scan([new + 1])
    assert report.flagged and report.shift[0] == pytest.approx(1 / 0.04, rel=1e-3)


def test_a_different_channel_count_names_both_shapes():
    train = StatsRecorder((0, 1, 3)).update(torch.randn(4, 1, 8, 20))
    with pytest.raises(ValueError, match=r"shape \(1, 1, 6, 1\) but the training statistics have shape \(1, 1, 8, 1\)"):
        NormDriftMonitor(reference=train, warn=False).scan([torch.randn(4, 1, 6, 20)])
