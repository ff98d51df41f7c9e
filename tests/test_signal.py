"""Resample, DownmixMono, ResizeSignal."""

import numpy as np
import pytest
import torch
from conftest import tone, write_audio

from specnorm.audio import AudioTensor
from specnorm.signal import DownmixMono, Resample, ResizeSignal, _resampler


def test_resampled_tone_keeps_its_frequency(device):
    audio = AudioTensor(torch.from_numpy(tone(1000, 44100, 1.0)).to(device), sr=44100)
    out = Resample(16000)(audio)
    assert out.sr == 16000 and out.shape == (1, 16000) and out.device.type == device.type
    spectrum = np.abs(np.fft.rfft(out[0].cpu().numpy()))
    assert np.fft.rfftfreq(16000, 1 / 16000)[spectrum.argmax()] == pytest.approx(1000, abs=1)


def test_resample_kernel_is_built_once_per_rate_pair():
    tfm = Resample(16000)
    tfm(AudioTensor(torch.randn(1, 2205), sr=22050))
    before = _resampler.cache_info()
    tfm(AudioTensor(torch.randn(1, 4410), sr=22050))
    after = _resampler.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses


def test_same_rate_passes_through():
    audio = AudioTensor(torch.randn(1, 100), sr=16000)
    assert Resample(16000)(audio) is audio


def test_downmix_of_a_stereo_file_is_the_channel_mean(tmp_path):
    data = np.concatenate([tone(440, 8000, 0.2), tone(660, 8000, 0.2, amplitude=0.3)])
    audio = AudioTensor.create(write_audio(tmp_path / "stereo.flac", data, 8000))
    mono = DownmixMono()(audio)
    assert mono.shape == (1, 1600) and mono.sr == 8000
    np.testing.assert_allclose(mono[0].numpy(), audio.numpy().mean(0), atol=1e-7)


def test_crop_from_start_outside_training_and_random_slice_in_training():
    x = AudioTensor(torch.arange(16000.0)[None], sr=16000)
    resize = ResizeSignal(250)
    torch.testing.assert_close(resize(x, split_idx=1).as_subclass(torch.Tensor), torch.arange(4000.0)[None])
    starts = set()
    for _ in range(20):
        y = resize(x, split_idx=0)
        start = int(y[0, 0])
        torch.testing.assert_close(y.as_subclass(torch.Tensor), torch.arange(start, start + 4000.0)[None])
        starts.add(start)
    assert len(starts) > 1 and y.sr == 16000


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("zeros_after", [1, 2, 3, 0, 0, 0]),
        ("zeros", [0, 1, 2, 3, 0, 0]),
        ("repeat", [1, 2, 3, 1, 2, 3]),
    ],
)
def test_pad_modes(mode, expected):
    x = AudioTensor(torch.tensor([[1.0, 2.0, 3.0]]), sr=1000)
    y = ResizeSignal(6, pad_mode=mode)(x)
    assert y.tolist() == [expected] and y.sr == 1000


def test_random_zero_padding_in_training_keeps_the_signal():
    x = AudioTensor(torch.ones(2, 3), sr=1000)
    for _ in range(10):
        y = ResizeSignal(10)(x, split_idx=0)
        assert y.shape == (2, 10) and y.sum() == 6 and (y[0] == y[1]).all()


def test_bad_arguments_and_empty_signals():
    with pytest.raises(ValueError, match="pad_mode"):
        ResizeSignal(1000, pad_mode="reflect")
    with pytest.raises(ValueError, match="duration"):
        ResizeSignal(0)
    with pytest.raises(ValueError, match="empty signal"):
        ResizeSignal(10)(AudioTensor(torch.zeros(1, 0), sr=1000))
