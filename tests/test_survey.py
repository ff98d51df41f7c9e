"""survey_audio: default sample rate (no upsampling) and crop length (90th percentile) from file headers."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import tone, write_audio

from specnorm.survey import AudioSurvey, survey_audio


def _clips(folder, sr, seconds, channels=1, ext="wav"):
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_audio(folder / f"{i:03d}.{ext}", tone(440, sr, s, amplitude=0.1, channels=channels), sr)
        for i, s in enumerate(seconds)
    ]


def test_short_8khz_clips_keep_their_rate_and_get_a_short_crop(tmp_path):
    # spoken-digit-like: 8 kHz, 0.3-0.9 s
    seconds = np.linspace(0.3, 0.9, 20)
    files = _clips(tmp_path, 8000, seconds)
    with pytest.warns(UserWarning, match="clip lengths vary a lot"):
        s = survey_audio(files)
    assert isinstance(s, AudioSurvey)
    assert s.default_sample_rate == 8000  # not the 16 kHz library default: no upsampling
    # independent reference: the shortest 100 ms multiple that holds at least 90% of the clips whole
    crops = np.arange(100, 2000, 100)
    expected = crops[[np.mean(seconds * 1000 <= c + 1e-9) >= 0.9 for c in crops].index(True)]
    assert s.default_crop_ms == expected == 900
    np.testing.assert_array_equal(s.frames, [round(8000 * x) for x in seconds])
    np.testing.assert_allclose(s.durations, seconds, atol=1 / 8000)
    assert s.files == tuple(map(str, files)) and set(s.channels) == {1}


def test_44k_5s_clips_keep_their_rate_and_a_5s_crop(tmp_path):
    files = _clips(tmp_path, 44100, [5.0] * 4, channels=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        s = survey_audio(files)
    assert (s.default_sample_rate, s.default_crop_ms) == (44100, 5000)
    assert s.notes == () and set(s.channels) == {2}
    assert survey_audio(files, max_sample_rate=16000).default_sample_rate == 16000
    assert "default_sample_rate=44100, default_crop_ms=5000" in repr(s)


@pytest.mark.parametrize(
    "rates, expected",
    [
        ([16000] * 9 + [8000], 16000),  # one file in ten upsampled: allowed
        ([16000] * 8 + [8000] * 2, 8000),  # two in ten would be: the lower rate
        ([44100] * 5 + [16000] * 5, 16000),  # half and half: never upsample half of the set
        ([22050, 44100, 48000] * 4, 22050),
    ],
)
def test_mixed_rates_upsample_at_most_a_tenth(tmp_path, rates, expected):
    files = [write_audio(tmp_path / f"{i}.wav", tone(100, r, 0.25), r) for i, r in enumerate(rates)]
    with pytest.warns(UserWarning, match="several sample rates"):
        s = survey_audio(files)
    assert s.default_sample_rate == expected
    assert np.mean(np.array(rates) < expected) <= 0.1


def test_crop_is_a_measured_length_rounded_up(tmp_path):
    files = _clips(tmp_path, 16000, [1.0] * 9 + [3.0])  # one long outlier does not set the crop
    assert survey_audio(files).default_crop_ms == 1000
    files = _clips(tmp_path / "b", 16000, [1.23] * 10)
    assert survey_audio(files).default_crop_ms == 1300


def test_accepts_str_path_and_flac_and_samples_large_sets(tmp_path):
    files = _clips(tmp_path, 22050, [0.5] * 6, ext="flac")
    for given in (files, [str(f) for f in files], (Path(f) for f in files)):
        s = survey_audio(given)
        assert (s.default_sample_rate, s.default_crop_ms) == (22050, 500)
    sampled = survey_audio(files, max_files=3)
    assert len(sampled.files) == 3 and set(sampled.files) <= set(map(str, files))


def test_unreadable_or_empty_files_are_named(tmp_path):
    good = _clips(tmp_path, 8000, [0.5])
    (tmp_path / "garbage.wav").write_bytes(b"not audio at all")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 8000)
    with pytest.raises(ValueError, match=r"2 of 3 files cannot be used: .*garbage\.wav.*empty\.wav \(no samples\)"):
        survey_audio(good + [tmp_path / "garbage.wav", tmp_path / "empty.wav"])
    with pytest.raises(ValueError, match="no files"):
        survey_audio([])
