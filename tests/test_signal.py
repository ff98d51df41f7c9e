"""resample, Resample, DownmixMono, ResizeSignal."""

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from conftest import tone, write_audio

from specnorm.audio import AudioTensor
from specnorm.signal import (
    DownmixMono,
    Resample,
    ResizeSignal,
    _BandedResampler,
    _DirectResampler,
    _resampler,
    resample,
)


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


@pytest.mark.parametrize("orig,new", [(44100, 16000), (22050, 16000), (48000, 44100), (44100, 8000)])
@pytest.mark.parametrize("length", [1, 440, 441, 22050, 22051])
def test_banded_products_equal_torchaudio_convolution(orig, new, length):
    """The CPU path over the kernel's non-zero band is torchaudio's resampling, to float32 rounding: both
    are within 1e-4 of each other (the float32 kernel's rounding), and ours is no farther from the float64 result."""
    x = torch.randn(3, 2, length, generator=torch.Generator().manual_seed(length))
    resampler = _resampler(orig, new, torch.device("cpu"))
    assert isinstance(resampler, _BandedResampler)
    out, expected = resample(x, orig, new), AF.resample(x, orig, new)
    exact = AF.resample(x.double(), orig, new)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    assert (out.double() - exact).abs().max() <= (expected.double() - exact).abs().max() * 1.1 + 1e-7


def test_banded_products_only_where_they_pay():
    # upsampling by 2: a frame step of one sample, no zero taps to skip: torchaudio's convolution
    assert not isinstance(_resampler(8000, 16000, torch.device("cpu")), _BandedResampler)


@pytest.mark.parametrize("orig,new", [(44100, 16000), (22050, 16000), (8000, 16000), (48000, 44100)])
def test_direct_evaluation_equals_torchaudio_polyphase_kernel(orig, new, device):
    "The bounded-memory path is the same filter: it agrees with torchaudio where torchaudio's kernel is small."
    x = torch.randn(2, 1, orig // 2, generator=torch.Generator().manual_seed(0)).to(device)
    g = math.gcd(orig, new)
    direct = _DirectResampler(orig // g, new // g, device)(x).cpu()
    expected = AF.resample(x.cpu(), orig, new)  # the CPU's float32: torchaudio's CUDA convolution may use TF32
    assert direct.shape == expected.shape
    torch.testing.assert_close(direct, expected, atol=2e-4, rtol=0)


def test_coprime_rates_resample_in_bounded_memory_and_match_the_band_limited_signal():
    """16000 -> 17001 Hz (17001 phases: torchaudio's kernel needs 2 GB) under a 1 GB address-space limit
    on top of what the interpreter already maps; the output matches the two tones evaluated exactly
    (float64) at the new sample times to 1e-3 away from the edges (zero padding beyond them)."""
    code = textwrap.dedent(
        """
        import resource
        import numpy as np, torch
        from specnorm.signal import resample
        vm = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30),) * 2)
        def tones(t):
            return 0.5 * np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 3300 * t + 0.4)
        x = torch.from_numpy(tones(np.arange(2 * 16000) / 16000)).float()[None, None]
        y = resample(x, 16000, 17001)[0, 0].double().numpy()
        ref = tones(np.arange(2 * 17001) / 17001)
        assert y.shape == ref.shape, y.shape
        print(np.abs(y - ref)[200:-200].max())
        try:
            import torchaudio.functional as AF
            AF.resample(x, 16000, 17001)
            print('torchaudio fits')
        except RuntimeError:
            print('torchaudio does not fit')
        """
    )
    # Two threads, as on a 2-core machine: each thread's malloc arena reserves 64 MB of address space (not
    # memory), which on a 16-core machine alone would fill the limit.
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MALLOC_ARENA_MAX": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    err, torchaudio_note = out.stdout.split()[0], out.stdout.split("\n")[1]
    assert float(err) < 1e-3
    assert torchaudio_note == "torchaudio does not fit"  # the limit is tight enough to matter


@pytest.mark.parametrize("orig,new", [(16000, 17001), (192000, 3001), (3001, 192000), (44100, 16000)])
def test_tone_keeps_its_peak_at_any_rate_pair(orig, new):
    x = torch.from_numpy(tone(1000, orig, 1.0))
    y = resample(x, orig, new)[0].numpy()
    assert y.shape == (math.ceil(orig * new / orig),)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert np.fft.rfftfreq(len(y), 1 / new)[spectrum.argmax()] == pytest.approx(1000, abs=1.5)
    assert np.abs(y[new // 10 : -new // 10]).max() == pytest.approx(0.5, abs=0.01)


def test_resample_accepts_fastaudio_keyword_and_rejects_ambiguity():
    assert Resample(sr_new=22050).sr == 22050
    out = Resample(sr_new=8000)(AudioTensor(torch.randn(1, 16000), sr=16000))
    assert out.shape == (1, 8000) and out.sr == 8000
    with pytest.raises(ValueError, match="sr_new"):
        Resample(16000, sr_new=8000)
    with pytest.raises(ValueError, match="positive"):
        resample(torch.zeros(1, 10), 0, 16000)


def test_resize_records_the_valid_length_and_resample_scales_it():
    x = AudioTensor(torch.ones(1, 300), sr=1000)
    assert ResizeSignal(500)(x).lengths == 300  # padded: the signal's own samples
    assert ResizeSignal(200)(x).lengths == 200  # cropped: all signal
    assert ResizeSignal(500, pad_mode="repeat")(x).lengths == 500
    batch = AudioTensor(torch.ones(2, 1, 500), sr=1000, lengths=torch.tensor([300, 500]))
    out = Resample(3000)(batch)
    assert out.shape == (2, 1, 1500) and out.lengths.tolist() == [900, 1500]
    assert Resample(441)(batch).lengths.tolist() == [math.ceil(300 * 0.441), math.ceil(500 * 0.441)]
