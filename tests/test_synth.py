"""The synthetic ESC-50-style dataset: layout, balance, determinism, and that each class sounds as named."""

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from specnorm.synth import GAIN_RANGE_DB, SYNTH_CLASSES, make_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return root, make_synthetic_dataset(root, n_classes=10, clips_per_class=10, seconds=1.0, sr=16000, seed=3)


def test_layout_matches_esc50(dataset):
    root, df = dataset
    assert list(df.columns[:4]) == ["filename", "fold", "target", "category"]
    pd.testing.assert_frame_equal(pd.read_csv(root / "meta" / "esc50.csv"), df)
    assert sorted(p.name for p in (root / "audio").glob("*.wav")) == sorted(df.filename)
    assert df.filename.is_unique
    # ESC-50 names files {fold}-{source id}-{take}-{target}.wav
    parsed = df.filename.str.extract(r"^(\d)-(\d+)-A-(\d+)\.wav$").astype(int)
    assert (parsed[0] == df.fold).all() and (parsed[2] == df.target).all()
    assert dict(zip(df.target, df.category)) == {k: c[0] for k, c in enumerate(SYNTH_CLASSES)}
    info = sf.info(root / "audio" / df.filename[0])
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")


def test_folds_are_balanced(dataset):
    _, df = dataset
    counts = df.groupby(["fold", "category"]).size().unstack(fill_value=0)
    assert counts.shape == (5, 10)  # every fold holds every class
    assert (counts.to_numpy() == 2).all()  # 10 clips per class over 5 folds


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    kwargs = dict(n_classes=3, clips_per_class=5, seconds=0.5, sr=16000)
    a = make_synthetic_dataset(tmp_path / "a", seed=7, **kwargs)
    b = make_synthetic_dataset(tmp_path / "b", seed=7, **kwargs)
    make_synthetic_dataset(tmp_path / "c", seed=8, **kwargs)
    pd.testing.assert_frame_equal(a, b)
    for fn in a.filename:
        assert (tmp_path / "a" / "audio" / fn).read_bytes() == (tmp_path / "b" / "audio" / fn).read_bytes()
    assert any(
        (tmp_path / "a" / "audio" / fn).read_bytes() != (tmp_path / "c" / "audio" / fn).read_bytes()
        for fn in a.filename
    )


def _power_spectrum(path):
    x, sr = sf.read(path, dtype="float64")
    return np.fft.rfftfreq(len(x), 1 / sr), np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2


@pytest.mark.parametrize("category,freq", [("tone_440", 440.0), ("tone_3k", 3000.0)])
def test_tone_classes_peak_at_their_frequency(dataset, category, freq):
    root, df = dataset
    for fn in df.filename[df.category == category]:
        freqs, power = _power_spectrum(root / "audio" / fn)
        # Above the brown/pink background's low-frequency bulk, the strongest bin is the tone,
        # within its ±3% jitter.
        above = freqs > 150
        peak = freqs[above][np.argmax(power[above])]
        assert abs(peak - freq) <= 0.035 * freq, (fn, peak)


def test_harmonic_class_has_its_harmonics(dataset):
    root, df = dataset
    fn = df.filename[df.category == "harmonic_700"].iloc[0]
    freqs, power = _power_spectrum(root / "audio" / fn)
    f0 = freqs[(freqs > 600) & (freqs < 800)][np.argmax(power[(freqs > 600) & (freqs < 800)])]
    for k in (2, 3, 4):  # each multiple of the fundamental stands 20 dB above its neighbourhood
        near = (freqs > k * f0 - 150) & (freqs < k * f0 + 150)
        at = np.abs(freqs - k * f0) < 8
        assert 10 * np.log10(power[at].max() / np.median(power[near])) > 20


def test_gains_are_spread_over_tens_of_db(dataset):
    root, df = dataset
    peaks = np.array([np.abs(sf.read(root / "audio" / fn)[0]).max() for fn in df.filename])
    spread_db = 20 * np.log10(peaks.max() / peaks.min())
    assert 25 < spread_db < GAIN_RANGE_DB[1] - GAIN_RANGE_DB[0] + 10


def test_background_is_coloured(dataset):
    # Pink to brown background: the 100-500 Hz band carries far more power per Hz than 6-7.5 kHz
    # in clips of classes that put nothing there (tone_3k's event sits at 3 kHz).
    root, df = dataset
    for fn in df.filename[df.category == "tone_3k"]:
        freqs, power = _power_spectrum(root / "audio" / fn)
        low = power[(freqs > 100) & (freqs < 500)].mean()
        high = power[(freqs > 6000) & (freqs < 7500)].mean()
        assert 10 * np.log10(low / high) > 10


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n_classes=0), "n_classes"),
        (dict(n_classes=11), "n_classes"),
        (dict(clips_per_class=4), "clips_per_class"),
        (dict(sr=8000), "sr"),
        (dict(seconds=0.0), "seconds"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic_dataset(tmp_path, **kwargs)
