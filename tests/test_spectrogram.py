"""AudioToSpec and AudioToMFCC against torchaudio applied directly."""

import numpy as np
import pytest
import torch
import torchaudio.transforms as T
from conftest import tone

from specnorm.audio import AudioSpectrogram, AudioTensor
from specnorm.config import AudioConfig
from specnorm.spectrogram import AudioToMFCC, AudioToSpec


def test_basic_spectrogram_contract_5s_16k():
    spec = AudioToSpec.from_cfg(AudioConfig.BasicSpectrogram())(AudioTensor(torch.randn(1, 80000), sr=16000))
    assert isinstance(spec, AudioSpectrogram) and spec.shape == (1, 201, 401)
    assert (spec.sr, spec.n_fft, spec.win_length, spec.hop_length, spec.mel, spec.to_db) == (
        16000,
        400,
        400,
        200,
        False,
        True,
    )


def test_equals_torchaudio_on_items_and_batches(device):
    x = torch.randn(3, 1, 16000, device=device)
    a2s = AudioToSpec.from_cfg(AudioConfig.BasicSpectrogram(n_fft=512))
    reference = T.AmplitudeToDB()(T.Spectrogram(n_fft=512).to(device)(x))
    batch = a2s(AudioTensor(x, sr=16000))
    assert batch.device.type == device.type and batch.shape == (3, 1, 257, 63)
    torch.testing.assert_close(batch.as_subclass(torch.Tensor), reference)
    torch.testing.assert_close(a2s(AudioTensor(x[1], sr=16000)).as_subclass(torch.Tensor), reference[1])
    # built once on the CPU, copied to another device once
    assert len(a2s._pipes) == (device.type != "cpu") and a2s._pipe(device) is a2s._pipe(device)


def test_mel_equals_torchaudio(device):
    x = torch.randn(2, 1, 8000, device=device)
    cfg = AudioConfig.BasicMelSpectrogram(sample_rate=8000, n_mels=40, top_db=80.0)
    reference = T.AmplitudeToDB(top_db=80.0)(T.MelSpectrogram(sample_rate=8000, n_mels=40).to(device)(x))
    spec = AudioToSpec.from_cfg(cfg)(AudioTensor(x, sr=8000))
    torch.testing.assert_close(spec.as_subclass(torch.Tensor), reference)
    assert spec.mel and spec.n_mels == 40 and spec.f_min == 0.0


def test_tone_peaks_at_its_frequency():
    spec = AudioToSpec(n_fft=1024)(AudioTensor(torch.from_numpy(tone(1000, 16000, 1.0)), sr=16000))
    peak_bin = spec[0].mean(-1).argmax().item()
    assert spec.frequencies()[peak_bin] == pytest.approx(1000, abs=16000 / 1024)


def test_magnitude_to_db_uses_amplitude_scale():
    x = torch.randn(1, 4000)
    spec = AudioToSpec(power=1.0)(AudioTensor(x, sr=16000))
    reference = T.AmplitudeToDB(stype="magnitude")(T.Spectrogram(power=1.0)(x))
    torch.testing.assert_close(spec.as_subclass(torch.Tensor), reference)


def test_mfcc_equals_torchaudio(device):
    x = torch.randn(1, 16000, device=device)
    mfcc = AudioToMFCC.from_cfg(AudioConfig.BasicMFCC(n_mfcc=20))(AudioTensor(x, sr=16000))
    torch.testing.assert_close(mfcc.as_subclass(torch.Tensor), T.MFCC(n_mfcc=20).to(device)(x))
    assert mfcc.mfcc and mfcc.n_mfcc == 20 and mfcc.frequencies() is None


def test_mel_refuses_another_sample_rate():
    with pytest.raises(ValueError, match="sample_rate=16000 but the audio is at 44100 Hz"):
        AudioToSpec(mel=True)(AudioTensor(torch.randn(1, 4410), sr=44100))


def test_empty_signal_is_an_error():
    with pytest.raises(ValueError, match=r"empty signal of shape \(1, 0\)"):
        AudioToSpec()(AudioTensor(torch.zeros(1, 0), sr=16000))


def test_plain_tensors_pass_through():
    x = torch.randn(1, 1000)
    assert AudioToSpec()(x) is x


def test_agrees_with_librosa_on_the_same_settings():
    """specnorm and librosa spectrograms agree to 2e-3 dB wherever the power is above -60 dB.

    Both are a Hann-window STFT with reflect padding and 10*log10(max(power, 1e-10)); the
    tolerance covers float32 FFT rounding, which matters only at very low power.
    """
    import librosa

    x = tone(440, 16000, 1.0) + 0.1 * np.random.default_rng(0).standard_normal((1, 16000)).astype(np.float32)
    ours = AudioToSpec(n_fft=512, hop_length=128)(AudioTensor(torch.from_numpy(x), sr=16000))[0].numpy()
    power = np.abs(librosa.stft(x[0].astype(np.float64), n_fft=512, hop_length=128, pad_mode="reflect")) ** 2
    reference = librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None)
    loud = reference > -60
    assert ours.shape == reference.shape and loud.mean() > 0.9
    np.testing.assert_allclose(ours[loud], reference[loud], atol=2e-3)


def test_overflowing_samples_are_reported_by_check():
    # finite samples of 1e20 pass AudioTensor, but their power (1e40) overflows float32: Inf in the
    # spectrogram, counted on the device and raised by check()
    a2s = AudioToSpec(n_fft=64, hop_length=32)
    a2s(AudioTensor(torch.randn(2, 1, 800), sr=16000))
    loud = torch.randn(2, 1, 800)
    loud[1, 0, 100:200] = 1e20
    out = a2s(AudioTensor(loud, sr=16000))
    assert not torch.isfinite(out).all()
    with pytest.raises(ValueError, match=r"AudioToSpec: 1 of the 2 batches .*batch 1 .*shape \(2, 1, 33, 26\)"):
        a2s.check()
    a2s.check()  # reported once


@pytest.mark.parametrize(
    "settings",
    [
        dict(n_fft=400),
        dict(n_fft=255, hop_length=100, top_db=60.0),
        dict(n_fft=256, center=False, power=1.0),
        dict(n_fft=256, win_length=201, hop_length=64, pad_mode="constant"),
        dict(n_fft=256, win_length=200, hop_length=64),
        dict(n_fft=256, normalized=True),
        dict(mel=True, n_fft=512, n_mels=32, top_db=40.0),
        dict(to_db=False, n_fft=128),
    ],
)
def test_chunks_equal_torchaudio_on_the_whole_batch(settings, monkeypatch):
    # a chunk of one item: every batch crosses chunk boundaries; top_db stays per item
    import specnorm.spectrogram as sp

    monkeypatch.setattr(sp, "CPU_CHUNK_BYTES", 1)
    settings = dict(settings)
    mel, to_db, top_db = settings.pop("mel", False), settings.pop("to_db", True), settings.get("top_db")
    x = torch.randn(5, 2, 4001) * torch.logspace(-3, 1, 5)[:, None, None]
    spec = (T.MelSpectrogram if mel else T.Spectrogram)(**{k: v for k, v in settings.items() if k != "top_db"})
    reference = spec(x)
    if to_db:
        stype = "magnitude" if settings.get("power") == 1.0 else "power"
        reference = T.AmplitudeToDB(stype=stype, top_db=top_db)(reference)
    a2s = AudioToSpec(mel=mel, to_db=to_db, **settings)
    torch.testing.assert_close(a2s(AudioTensor(x, sr=16000)).as_subclass(torch.Tensor), reference)
    torch.testing.assert_close(a2s(AudioTensor(x[3], sr=16000)).as_subclass(torch.Tensor), reference[3])
    assert a2s(AudioTensor(x, sr=16000)).is_contiguous()


def test_gradients_flow_through_torchaudio():
    x = torch.randn(2, 1, 2000, requires_grad=True)
    AudioToSpec(n_fft=256)(AudioTensor(x, sr=16000)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
